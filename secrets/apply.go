package secrets

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// Applier logs tokens in with their stored PINs: each stored PIN is tried once per
// process, when its token is first seen present and not already logged in (a PIN
// from the configuration was accepted). A PIN the token rejects is deleted from the
// store and never tried again; a token that went away before the PIN reached it is
// tried when it is back.
type Applier struct {
	store *Store
	log   *slog.Logger
	// Configured, when set, names the tokens whose PIN the configuration gives
	// but that check it only when first used (a YubiKey): their stored PIN is not
	// tried, as it is not for a token the configuration already logged in.
	Configured func(hsm.Info) bool

	mu      sync.Mutex
	loaded  bool
	pending map[string]string // stored PINs not tried yet, by HSM id
}

// NewApplier returns an applier over s; log nil means slog.Default().
func NewApplier(s *Store, log *slog.Logger) *Applier {
	if log == nil {
		log = slog.Default()
	}
	return &Applier{store: s, log: log, pending: map[string]string{}}
}

// Load reads the stored PINs (once; later calls return nil). A store that does not
// open (wrong or missing key file, damaged file) is logged and returned, and nothing
// is applied: the appliance runs without its stored PINs until it is fixed.
func (a *Applier) Load() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.loaded {
		return nil
	}
	a.loaded = true
	pins, err := a.store.Load()
	if err != nil {
		a.log.Error("stored PINs not applied", "sealed_file", a.store.Path(), "key_file", a.store.KeyFile(), "err", err)
		return err
	}
	a.pending = pins
	if len(pins) > 0 {
		ids := make([]string, 0, len(pins))
		for id := range pins {
			ids = append(ids, id)
		}
		a.log.Info("stored PINs loaded", "hsms", ids)
	}
	return nil
}

// Apply tries the stored PINs of the given tokens (loading the store first if
// needed).
func (a *Applier) Apply(ctx context.Context, toks []hsm.Token) {
	a.Load()
	for _, t := range toks {
		a.apply(ctx, t)
	}
}

func (a *Applier) apply(ctx context.Context, t hsm.Token) {
	info := t.Info()
	a.mu.Lock()
	pin, ok := a.pending[info.ID]
	if ok && info.Present {
		delete(a.pending, info.ID) // tried once, whatever happens below
	}
	a.mu.Unlock()
	if !ok || !info.Present {
		return
	}
	if info.PIN.Set || (a.Configured != nil && a.Configured(info)) {
		a.log.Info("stored PIN not tried: the configuration gives this token's PIN", "hsm", info.ID)
		return
	}
	err := hsm.Login(ctx, t, pin)
	switch {
	case err == nil:
		a.log.Info("logged in with the stored PIN", "hsm", info.ID)
	case errors.Is(err, hsm.ErrPINIncorrect), errors.Is(err, hsm.ErrPINBlocked):
		if derr := a.store.Delete(info.ID); derr != nil {
			a.log.Error("stored PIN refused by the token and not retried; deleting it from the store failed", "hsm", info.ID,
				"retries", hsm.PINRetries(err), "err", err, "delete_err", derr)
			return
		}
		a.log.Error("stored PIN refused by the token; deleted from the store and not retried", "hsm", info.ID,
			"retries", hsm.PINRetries(err), "err", err)
	case errors.Is(err, hsm.ErrOffline):
		// The PIN never reached the token: try again when it is back.
		a.mu.Lock()
		a.pending[info.ID] = pin
		a.mu.Unlock()
		a.log.Warn("stored PIN not tried: the token went away; trying when it is back", "hsm", info.ID)
	default:
		a.log.Error("stored PIN not applied; kept in the store, not retried until restart", "hsm", info.ID, "err", err)
	}
}

// Wrap returns providers whose scans apply stored PINs to the tokens they return,
// so a token plugged in after start-up is unlocked when it is first seen.
func (a *Applier) Wrap(ps ...hsm.Provider) []hsm.Provider {
	out := make([]hsm.Provider, len(ps))
	for i, p := range ps {
		out[i] = &provider{Provider: p, a: a}
	}
	return out
}

type provider struct {
	hsm.Provider
	a *Applier
}

func (p *provider) Tokens(ctx context.Context) ([]hsm.Token, error) {
	toks, err := p.Provider.Tokens(ctx)
	if len(toks) > 0 {
		p.a.Apply(ctx, toks)
	}
	return toks, err
}
