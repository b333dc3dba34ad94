// Package pkcs11 is the PKCS#11 backend: any vendor module (SoftHSM2 in tests and labs)
// loaded by path, every initialised token an HSM, its slots key objects named by CKA_ID.
package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// reinitGap bounds how often a missing token may force C_Finalize/C_Initialize: the
// re-initialisation drops every session of the module, so an absent token must not
// make the other tokens of the same module flap.
const reinitGap = 2 * time.Second

// Module is one loaded PKCS#11 library. Tokens of the module share its context; a
// re-initialisation (after a token was removed and came back) is visible to all of
// them through the generation counter.
type Module struct {
	path string
	ctx  *pkcs11.Ctx

	// rw is held shared by every PKCS#11 call and exclusively by re-initialisation,
	// so no call runs against a finalised library.
	rw         sync.RWMutex
	generation uint64
	lastReinit time.Time

	mu     sync.Mutex
	tokens map[string]*Token // by serial, so a token keeps its PIN and state across rescans
	closed bool
}

// Open loads and initialises the module at path.
func Open(path string) (*Module, error) {
	defer pinThread()()
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w: PKCS#11 module %s: %v", hsm.ErrInvalidConfig, path, err)
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: %s is not a loadable PKCS#11 module", hsm.ErrInvalidConfig, path)
	}
	if err := ctx.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		ctx.Destroy()
		return nil, fmt.Errorf("pkcs11: initialise %s: %w", path, err)
	}
	return &Module{path: path, ctx: ctx, generation: 1, tokens: map[string]*Token{}}, nil
}

// Path is the module's file name, as configured.
func (m *Module) Path() string { return m.path }

// Tokens returns every initialised token the module shows now. Tokens seen before are
// returned as the same objects; those no longer shown are marked absent, not dropped.
func (m *Module) Tokens(ctx context.Context) ([]hsm.Token, error) {
	toks, err := m.scan(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]hsm.Token, len(toks))
	for i, t := range toks {
		out[i] = t
	}
	return out, nil
}

// Token returns the token with the given serial, scanning when it is not known yet.
func (m *Module) Token(ctx context.Context, serial string) (*Token, error) {
	m.mu.Lock()
	t, ok := m.tokens[serial]
	m.mu.Unlock()
	if ok {
		return t, nil
	}
	if _, err := m.scan(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.tokens[serial]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("%w: no token with serial %q in %s", hsm.ErrNotFound, serial, m.path)
}

// Rescan re-initialises the module so that tokens created or inserted since it was
// loaded appear (SoftHSM2 and many vendor modules read their token list only in
// C_Initialize), then scans. Sessions are reopened on next use.
func (m *Module) Rescan(ctx context.Context) ([]hsm.Token, error) {
	if err := m.reinit(true); err != nil {
		return nil, err
	}
	return m.Tokens(ctx)
}

func (m *Module) scan(ctx context.Context) ([]*Token, error) {
	defer pinThread()()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.rw.RLock()
	slots, err := m.ctx.GetSlotList(true)
	type found struct {
		slot uint
		info pkcs11.TokenInfo
	}
	var seen []found
	if err == nil {
		for _, s := range slots {
			ti, err := m.ctx.GetTokenInfo(s)
			if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
				continue // SoftHSM2 always shows one free, uninitialised slot
			}
			seen = append(seen, found{s, ti})
		}
	}
	m.rw.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("pkcs11: list slots of %s: %w", m.path, err)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("%w: module %s closed", hsm.ErrOffline, m.path)
	}
	present := map[string]bool{}
	var out []*Token
	for _, f := range seen {
		serial := trim(f.info.SerialNumber)
		present[serial] = true
		t, ok := m.tokens[serial]
		if !ok {
			t = newToken(m, serial, f.info)
			m.tokens[serial] = t
		}
		t.seen(f.slot, f.info)
		out = append(out, t)
	}
	for serial, t := range m.tokens {
		if !present[serial] {
			t.markAbsent("no longer listed by the module")
		}
	}
	return out, nil
}

// reinit finalises and initialises the library again. Unless forced, it runs at most
// once per reinitGap.
func (m *Module) reinit(force bool) error {
	defer pinThread()()
	m.rw.Lock()
	defer m.rw.Unlock()
	if !force && time.Since(m.lastReinit) < reinitGap {
		return nil
	}
	m.lastReinit = time.Now()
	_ = m.ctx.Finalize() // fails harmlessly when already finalised
	if err := m.ctx.Initialize(); err != nil {
		return fmt.Errorf("%w: re-initialise %s: %v", hsm.ErrOffline, m.path, err)
	}
	m.generation++
	slog.Info("pkcs11 module re-initialised", "module", m.path)
	return nil
}

// Close logs out, finalises and unloads the module.
func (m *Module) Close() error {
	defer pinThread()()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	toks := m.tokens
	m.mu.Unlock()
	for _, t := range toks {
		_ = t.Close()
	}
	m.rw.Lock()
	defer m.rw.Unlock()
	err := m.ctx.Finalize()
	m.ctx.Destroy()
	if err != nil {
		return fmt.Errorf("pkcs11: finalise %s: %w", m.path, err)
	}
	return nil
}

var (
	_ hsm.Provider = (*Module)(nil)
	_ hsm.Token    = (*Token)(nil)
)
