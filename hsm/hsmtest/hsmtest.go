// Package hsmtest is an in-memory HSM for tests of the code above the hsm interface:
// real keys and signatures (crypto/ecdsa, crypto/rsa), a user PIN with a retry
// counter, presence, and injectable faults. It needs neither cgo nor a device, so a
// test about the appliance core runs anywhere; tests about a real token use SoftHSM2.
package hsmtest

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// Operation names, as FailNext and Calls take them: the hsm method names.
const (
	OpLogin            = "Login"
	OpSlots            = "Slots"
	OpGenerate         = "Generate"
	OpImport           = "Import"
	OpPublicKey        = "PublicKey"
	OpSigner           = "Signer"
	OpSign             = "Sign" // crypto.Signer.Sign of a slot's signer
	OpStoreCertificate = "StoreCertificate"
	OpCertificate      = "Certificate"
	OpDeleteKey        = "DeleteKey"
	OpPINRetries       = "PINRetries"
)

// Config describes a token. The zero value is a PKCS#11-like token "hsmtest-1" with
// PIN DefaultPIN and DefaultRetries tries.
type Config struct {
	ID      string   // Info().ID; default "hsmtest-" + Serial
	Kind    hsm.Kind // default hsm.KindPKCS11
	Serial  string   // default "1"
	PIN     string   // default DefaultPIN
	Retries int      // tries a wrong PIN may take before the PIN blocks; default DefaultRetries
	// NoPIN makes the keys usable without a login, as a backend that authenticates
	// by other credentials (Cloud KMS); use such a token through Core.
	NoPIN bool
}

// Defaults of Config.
const (
	DefaultPIN     = "123456"
	DefaultRetries = 3
)

// Token is an in-memory hsm.Token that also implements hsm.PINLogin, hsm.Importer,
// hsm.CertificateStore, hsm.KeyDeleter and hsm.PINCounter. Keys are used only after
// a successful Login, as on a real token; public keys, slots and certificates are
// readable without one. It is safe for concurrent use.
type Token struct {
	info    hsm.Info // ID, Kind, Model, Serial
	pin     string
	tries   int // the counter's reset value
	mu      sync.Mutex
	present bool
	retries int  // tries left; 0 is blocked
	login   bool // a PIN was accepted and is in use
	slots   map[string]*slot
	faults  map[string][]error
	calls   map[string]int
}

type slot struct {
	key   crypto.Signer
	kt    hsm.KeyType
	label string
	cert  *x509.Certificate
}

var (
	_ hsm.Token            = (*Token)(nil)
	_ hsm.PINLogin         = (*Token)(nil)
	_ hsm.Importer         = (*Token)(nil)
	_ hsm.CertificateStore = (*Token)(nil)
	_ hsm.KeyDeleter       = (*Token)(nil)
	_ hsm.PINCounter       = (*Token)(nil)
)

// New returns a present token, not logged in, with no keys.
func New(c Config) *Token {
	if c.Serial == "" {
		c.Serial = "1"
	}
	if c.ID == "" {
		c.ID = "hsmtest-" + c.Serial
	}
	if c.Kind == "" {
		c.Kind = hsm.KindPKCS11
	}
	if c.PIN == "" {
		c.PIN = DefaultPIN
	}
	if c.Retries <= 0 {
		c.Retries = DefaultRetries
	}
	return &Token{
		info: hsm.Info{ID: c.ID, Kind: c.Kind, Model: "hsmtest", Serial: c.Serial},
		pin:  c.PIN, tries: c.Retries, retries: c.Retries, present: true, login: c.NoPIN,
		slots: map[string]*slot{}, faults: map[string][]error{}, calls: map[string]int{},
	}
}

// PIN is the token's user PIN.
func (t *Token) PIN() string { return t.pin }

// SetPresent plugs the token in or pulls it out. While it is out every operation, a
// signer's Sign included, fails with hsm.ErrOffline; an accepted PIN stays in use
// across the re-plug, as the real backends log in again by themselves.
func (t *Token) SetPresent(present bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.present = present
}

// FailNext makes the next call of op (OpSign, OpGenerate, ...) return err instead of
// running. Calls queue: FailNext twice fails the next two calls.
func (t *Token) FailNext(op string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.faults[op] = append(t.faults[op], err)
}

// Calls is how many times op was called, failed calls included.
func (t *Token) Calls(op string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.calls[op]
}

// Keys is how many slots hold a key.
func (t *Token) Keys() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.slots)
}

// enter (t.mu held) counts the call and answers its injected fault, or ErrOffline
// when the token is out, or ErrPINRequired when the operation needs a login first.
func (t *Token) enter(op string, needLogin bool) error {
	t.calls[op]++
	if q := t.faults[op]; len(q) > 0 {
		t.faults[op] = q[1:]
		return q[0]
	}
	if !t.present {
		return fmt.Errorf("%w: %s is not plugged in", hsm.ErrOffline, t.info.ID)
	}
	if needLogin && !t.login {
		return fmt.Errorf("%w: %s: no PIN accepted yet", hsm.ErrPINRequired, t.info.ID)
	}
	return nil
}

// Info implements hsm.Token.
func (t *Token) Info() hsm.Info {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := t.info
	i.Present = t.present
	i.PIN = hsm.PINStatus{Set: t.login, Retries: t.retries}
	return i
}

// Login implements hsm.PINLogin. A wrong PIN takes a try and is a *hsm.PINError; the
// last try blocks the PIN, which then refuses even the right one. A refused PIN
// leaves an accepted one in use, unless it blocked the token.
func (t *Token) Login(_ context.Context, pin string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.enter(OpLogin, false); err != nil {
		return err
	}
	if pin == "" {
		return fmt.Errorf("%w: %s: empty PIN", hsm.ErrPINRequired, t.info.ID)
	}
	if t.retries == 0 {
		return &hsm.PINError{Token: t.info.ID, Retries: 0}
	}
	if pin != t.pin {
		t.retries--
		if t.retries == 0 {
			t.login = false
		}
		return &hsm.PINError{Token: t.info.ID, Retries: t.retries}
	}
	t.retries, t.login = t.tries, true
	return nil
}

// PINRetries implements hsm.PINCounter without spending a try.
func (t *Token) PINRetries(context.Context) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.enter(OpPINRetries, false); err != nil {
		return -1, err
	}
	return t.retries, nil
}

// Slots implements hsm.Token, ordered by slot name.
func (t *Token) Slots(context.Context) ([]hsm.SlotInfo, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.enter(OpSlots, false); err != nil {
		return nil, err
	}
	out := make([]hsm.SlotInfo, 0, len(t.slots))
	for name, s := range t.slots {
		out = append(out, hsm.SlotInfo{Slot: name, KeyType: s.kt, Label: s.label, HasCert: s.cert != nil, Occupied: true})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Slot < out[j].Slot })
	return out, nil
}

// Generate implements hsm.Token with a key made in memory.
func (t *Token) Generate(_ context.Context, name string, kt hsm.KeyType, opts hsm.KeyOptions) (crypto.PublicKey, error) {
	if _, err := hsm.ParseKeyType(string(kt)); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.writable(OpGenerate, name, opts); err != nil {
		return nil, err
	}
	key, err := generate(kt)
	if err != nil {
		return nil, err
	}
	t.slots[name] = &slot{key: key, kt: kt, label: opts.Label}
	return key.Public(), nil
}

// Import implements hsm.Importer. The token keeps its own copy of key, so the
// caller's wiping its copy does not touch it.
func (t *Token) Import(_ context.Context, name string, key crypto.Signer, opts hsm.KeyOptions) (crypto.PublicKey, error) {
	kt, err := hsm.KeyTypeOf(key.Public())
	if err != nil {
		return nil, err
	}
	own, err := clone(key)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.writable(OpImport, name, opts); err != nil {
		return nil, err
	}
	t.slots[name] = &slot{key: own, kt: kt, label: opts.Label}
	return own.Public(), nil
}

// writable (t.mu held) checks that a key may be written to the slot.
func (t *Token) writable(op, name string, opts hsm.KeyOptions) error {
	if err := t.enter(op, true); err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return err
	}
	if _, ok := t.slots[name]; ok && !opts.Overwrite {
		return fmt.Errorf("%w: %s/%s holds a key", hsm.ErrExists, t.info.ID, name)
	}
	return nil
}

func checkName(name string) error {
	if name == "" || strings.ContainsAny(name, "/ ") {
		return fmt.Errorf("%w: %q", hsm.ErrInvalidSlot, name)
	}
	return nil
}

// lookup (t.mu held) enters op and returns the slot's contents.
func (t *Token) lookup(op, name string, needLogin bool) (*slot, error) {
	if err := t.enter(op, needLogin); err != nil {
		return nil, err
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	s, ok := t.slots[name]
	if !ok {
		return nil, fmt.Errorf("%w: no key in %s/%s", hsm.ErrNotFound, t.info.ID, name)
	}
	return s, nil
}

// PublicKey implements hsm.Token.
func (t *Token) PublicKey(_ context.Context, name string) (crypto.PublicKey, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.lookup(OpPublicKey, name, false)
	if err != nil {
		return nil, err
	}
	return s.key.Public(), nil
}

// Signer implements hsm.Token. Each Sign checks presence, login and faults again.
func (t *Token) Signer(_ context.Context, name string) (crypto.Signer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.lookup(OpSigner, name, true)
	if err != nil {
		return nil, err
	}
	return &signer{t: t, name: name, pub: s.key.Public()}, nil
}

// StoreCertificate implements hsm.CertificateStore.
func (t *Token) StoreCertificate(_ context.Context, name string, cert *x509.Certificate) error {
	if cert == nil {
		return fmt.Errorf("%w: no certificate", hsm.ErrNotFound)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.lookup(OpStoreCertificate, name, true)
	if err != nil {
		return err
	}
	s.cert = cert
	return nil
}

// Certificate implements hsm.CertificateStore.
func (t *Token) Certificate(_ context.Context, name string) (*x509.Certificate, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.lookup(OpCertificate, name, false)
	if err != nil {
		return nil, err
	}
	if s.cert == nil {
		return nil, fmt.Errorf("%w: no certificate in %s/%s", hsm.ErrNotFound, t.info.ID, name)
	}
	return s.cert, nil
}

// DeleteKey implements hsm.KeyDeleter: key and certificate go.
func (t *Token) DeleteKey(_ context.Context, name string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.lookup(OpDeleteKey, name, true); err != nil {
		return err
	}
	delete(t.slots, name)
	return nil
}

// Close implements hsm.Token; the provider owns the token.
func (t *Token) Close() error { return nil }

// Core returns the token with only the hsm.Token methods, as a backend without the
// optional interfaces (a Cloud KMS key ring) is; make it with Config.NoPIN.
func (t *Token) Core() hsm.Token { return core{t} }

type core struct{ t *Token }

func (c core) Info() hsm.Info                                    { return c.t.Info() }
func (c core) Slots(ctx context.Context) ([]hsm.SlotInfo, error) { return c.t.Slots(ctx) }
func (c core) Generate(ctx context.Context, slot string, kt hsm.KeyType, o hsm.KeyOptions) (crypto.PublicKey, error) {
	return c.t.Generate(ctx, slot, kt, o)
}
func (c core) PublicKey(ctx context.Context, slot string) (crypto.PublicKey, error) {
	return c.t.PublicKey(ctx, slot)
}
func (c core) Signer(ctx context.Context, slot string) (crypto.Signer, error) {
	return c.t.Signer(ctx, slot)
}
func (c core) Close() error { return c.t.Close() }
