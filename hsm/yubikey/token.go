package yubikey

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/go-piv/piv-go/v2/piv"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// What a YubiKey offers beyond the core; a lost method would silently turn into
// ErrUnsupported, so the compiler checks.
var (
	_ hsm.PINLogin         = (*Token)(nil)
	_ hsm.Importer         = (*Token)(nil)
	_ hsm.CertificateStore = (*Token)(nil)
	_ hsm.ManagementKeyer  = (*Token)(nil)
	_ hsm.PINCounter       = (*Token)(nil)
	_ hsm.Attester         = (*Token)(nil)
)

// Token is one YubiKey. A mutex serialises its operations: the card runs one command
// at a time, and piv-go holds a PC/SC transaction while the card is open. The card is
// released after a short idle time so that other programs can use it.
type Token struct {
	p      *Provider
	serial uint32
	id     string

	mu         sync.Mutex
	reader     string
	yk         *piv.YubiKey // nil while released
	version    piv.Version
	formFactor string
	present    bool
	pin        string
	pinSet     bool // the PIN was accepted by this card
	// verified: the PIN is verified in the card's present session (it stays so
	// until the card is reset or released), so a signature needs no PIN check.
	verified      bool
	pinFromConfig bool
	retries       int
	mgmtKey       []byte // given with hsm.set_pin and checked by the card; memory only
	// trying is a PIN being checked for hsm.set_pin (t.mu held): when the card
	// refuses it, the working credentials are kept.
	trying string
	idle   *time.Timer
}

func (t *Token) holds(reader string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.yk != nil && t.reader == reader
}

// stillThere checks an open card with one cheap command. A token busy with an
// operation is there: the operation itself reports a pulled card.
func (t *Token) stillThere() bool {
	if !t.mu.TryLock() {
		return true
	}
	defer t.mu.Unlock()
	if t.yk == nil {
		return false
	}
	if s, err := t.yk.Serial(); err == nil && s == t.serial {
		return true
	}
	t.release()
	return false
}

func (t *Token) seen(reader string, v piv.Version) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.present {
		logger().Info("YubiKey present", "hsm", t.id, "reader", reader)
	}
	t.reader, t.version, t.present = reader, v, true
}

func (t *Token) markAbsent(why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.markAbsentLocked(why)
}

func (t *Token) markAbsentLocked(why string) {
	if t.present {
		logger().Warn("YubiKey gone", "hsm", t.id, "reason", why)
	}
	t.present = false
	t.release()
}

// release closes the card handle (t.mu held).
func (t *Token) release() {
	if t.yk != nil {
		t.yk.Close()
		t.yk = nil
	}
	t.verified = false
	if t.idle != nil {
		t.idle.Stop()
		t.idle = nil
	}
}

// Info implements hsm.Token.
func (t *Token) Info() hsm.Info {
	t.mu.Lock()
	defer t.mu.Unlock()
	model := fmt.Sprintf("YubiKey (firmware %d.%d.%d)", t.version.Major, t.version.Minor, t.version.Patch)
	if t.formFactor != "" {
		model = fmt.Sprintf("YubiKey %s (firmware %d.%d.%d)", t.formFactor, t.version.Major, t.version.Minor, t.version.Patch)
	}
	return hsm.Info{ID: t.id, Kind: hsm.KindYubiKey, Model: model, Serial: fmt.Sprint(t.serial),
		Present: t.present, PIN: hsm.PINStatus{Set: t.pinSet, Retries: t.retries}}
}

// open makes sure the card is open (t.mu held), finding it again by serial when it
// moved to another reader (re-plugged, or pcscd restarted). A card marked absent is
// not opened here: only a scan (hotplug, or the periodic one) brings it back, after
// pcscd has settled, because an open of a card that is going away fails and holds
// the reader until pcscd has seen the card go (see openCard).
func (t *Token) open() error {
	if t.yk != nil {
		return nil
	}
	if !t.present {
		return fmt.Errorf("%w: %s is not present", hsm.ErrOffline, t.id)
	}
	present, held := t.p.cardState(t.reader)
	if held {
		return fmt.Errorf("%w: %s is held by another program", hsm.ErrBusy, t.id)
	}
	var yk *piv.YubiKey
	err := fmt.Errorf("no card in %s", t.reader)
	if present {
		yk, err = t.p.openCard(t.reader)
	}
	if err == nil {
		if s, serr := yk.Serial(); serr != nil || s != t.serial {
			yk.Close()
			yk, err = nil, fmt.Errorf("another card in %s", t.reader)
		}
	}
	if err != nil {
		yk, err = t.find()
	}
	if err != nil {
		t.markAbsentLocked(err.Error())
		return fmt.Errorf("%w: %s is not present", hsm.ErrOffline, t.id)
	}
	t.yk, t.version, t.verified = yk, yk.Version(), false
	if ff, err := yk.FormFactor(); err == nil && ff != 0 {
		t.formFactor = ff.String()
	}
	return nil
}

// find looks through every reader for this card's serial.
func (t *Token) find() (*piv.YubiKey, error) {
	readers, err := cards()
	if err != nil {
		return nil, err
	}
	for _, r := range readers {
		if !t.p.usable(r) {
			continue
		}
		yk, err := t.p.openCard(r)
		if err != nil {
			continue
		}
		if s, err := yk.Serial(); err == nil && s == t.serial {
			t.reader = r
			return yk, nil
		}
		yk.Close()
	}
	return nil, errors.New("not in any reader")
}

// do runs fn on the open card. A PC/SC failure (card pulled, reset, pcscd
// restarted) drops the handle and marks the card absent; the next scan finds it
// again by serial. Nothing is retried here: a key generation must never run twice,
// and reopening a card that is going away fails and holds its reader for a while.
func (t *Token) do(ctx context.Context, fn func(yk *piv.YubiKey) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.open(); err != nil {
		return err
	}
	err := fn(t.yk)
	defer func() { t.trying = "" }()
	if isTransport(err) {
		logger().Warn("YubiKey transaction failed", "hsm", t.id, "err", err)
		t.markAbsentLocked(err.Error())
		t.p.fence(t.reader)
		return fmt.Errorf("%w: %s went away during the operation", hsm.ErrOffline, t.id)
	}
	t.touch()
	return t.mapErr(err)
}

// touch re-arms the idle release (t.mu held).
func (t *Token) touch() {
	if t.idle != nil {
		t.idle.Stop()
	}
	t.idle = time.AfterFunc(t.p.opts.IdleRelease, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.release()
	})
}

// mapErr turns card answers into the hsm package's errors (t.mu held). A rejected
// PIN is forgotten, so it is never tried again.
func (t *Token) mapErr(err error) error {
	if err == nil {
		return nil
	}
	var ae piv.AuthErr
	if errors.As(err, &ae) {
		t.retries = ae.Retries
		// A refused working PIN is forgotten, with the management key given with
		// it, so it is never presented again. A refused new PIN (hsm.set_pin)
		// leaves the working one in use, unless the card is now blocked.
		if t.trying == "" || t.trying == t.pin || ae.Retries == 0 {
			t.pin, t.pinSet, t.mgmtKey = "", false, nil
		}
		return &hsm.PINError{Token: t.id, Retries: ae.Retries}
	}
	if errors.Is(err, piv.ErrNotFound) {
		return fmt.Errorf("%w: %s: %v", hsm.ErrNotFound, t.id, err)
	}
	var sw interface{ Status() uint16 }
	if errors.As(err, &sw) && sw.Status() == 0x6982 {
		return fmt.Errorf("%w: %s: security status not satisfied", hsm.ErrPINRequired, t.id)
	}
	return fmt.Errorf("yubikey %s: %w", t.id, err)
}

// Login implements hsm.PINLogin: the PIN is verified once, and kept only when the card
// accepted it.
func (t *Token) Login(ctx context.Context, pin string) error {
	if pin == "" {
		return fmt.Errorf("%w: %s: empty PIN", hsm.ErrPINRequired, t.id)
	}
	return t.do(ctx, func(yk *piv.YubiKey) error {
		t.trying = pin
		if err := yk.VerifyPIN(pin); err != nil {
			t.verified = false
			return err
		}
		t.pin, t.pinSet, t.verified = pin, true, true
		// An accepted PIN resets the card's counter to its maximum, which PIV does
		// not tell (an empty VERIFY answers 9000 once verified): the count left
		// from an earlier failure would now be wrong, so it is unknown.
		t.retries = -1
		if r, err := yk.Retries(); err == nil {
			t.retries = r
		}
		return nil
	})
}

// PINRetries implements hsm.PINCounter: an empty VERIFY tells the count without
// spending a try. A card on which the PIN is verified in this session does not say
// (-1); its count is then at the maximum anyway.
func (t *Token) PINRetries(ctx context.Context) (int, error) {
	n := -1
	err := t.do(ctx, func(yk *piv.YubiKey) error {
		r, err := yk.Retries()
		if err == nil {
			n, t.retries = r, r
		}
		if isTransport(err) {
			return err
		}
		return nil
	})
	return n, err
}

// SetManagementKey implements hsm.ManagementKeyer. PIV has no command that only
// checks a management key, so the card checks it by a write that changes nothing:
// the PIN-protected metadata object, read with pin and written back byte for byte
// (a card without one gets an empty one). The key is kept in memory only.
func (t *Token) SetManagementKey(ctx context.Context, pin string, key []byte) error {
	if pin == "" {
		return fmt.Errorf("%w: %s: empty PIN", hsm.ErrPINRequired, t.id)
	}
	return t.do(ctx, func(yk *piv.YubiKey) error {
		t.trying = pin
		md, err := yk.Metadata(pin) // verifies the PIN: a wrong one is a PIN error
		if err != nil {
			return err
		}
		// Without the key field the raw object is written back unchanged.
		md.ManagementKey = nil
		if err := yk.SetMetadata(key, md); err != nil {
			if isTransport(err) {
				return err
			}
			return fmt.Errorf("%w: %s refused the management key", hsm.ErrManagementKey, t.id)
		}
		t.mgmtKey = append([]byte(nil), key...)
		return nil
	})
}

// pinFor returns the PIN to use (t.mu held): the accepted one, or the configured one
// not yet tried, or the factory PIN where the configuration allows it.
func (t *Token) pinFor() (string, error) {
	switch {
	case t.pin != "":
		return t.pin, nil
	case t.p.options(t.serial).AllowDefaults:
		return piv.DefaultPIN, nil
	}
	return "", fmt.Errorf("%w: no PIN set for %s", hsm.ErrPINRequired, t.id)
}

// managementKey finds the key for administrative commands (t.mu held): one given
// with hsm.set_pin, else an explicit one from the configuration, else the
// PIN-protected one in the card's metadata, else (labs only) the factory key.
func (t *Token) managementKey(yk *piv.YubiKey) ([]byte, error) {
	if t.mgmtKey != nil {
		return t.mgmtKey, nil
	}
	o := t.p.options(t.serial)
	if len(o.ManagementKey) > 0 {
		return o.ManagementKey, nil
	}
	pin, err := t.pinFor()
	if err != nil {
		return nil, err
	}
	md, err := yk.Metadata(pin)
	if err != nil {
		var ae piv.AuthErr
		if errors.As(err, &ae) {
			return nil, err
		}
	}
	if md != nil && md.ManagementKey != nil {
		t.pinSet = true
		return *md.ManagementKey, nil
	}
	if o.AllowDefaults {
		return piv.DefaultManagementKey, nil
	}
	return nil, fmt.Errorf("%w: %s has no PIN-protected management key and none is configured", hsm.ErrPINRequired, t.id)
}

// Slots implements hsm.Token.
func (t *Token) Slots(ctx context.Context) ([]hsm.SlotInfo, error) {
	var out []hsm.SlotInfo
	err := t.do(ctx, func(yk *piv.YubiKey) error {
		out = out[:0]
		for _, name := range SlotNames {
			slot, _, _ := ParseSlot(name)
			info := hsm.SlotInfo{Slot: name}
			if ki, err := yk.KeyInfo(slot); err == nil {
				info.Occupied = true
				info.KeyType, _ = hsm.KeyTypeOf(ki.PublicKey)
			} else if isTransport(err) {
				return err
			}
			if c, err := yk.Certificate(slot); err == nil {
				info.HasCert, info.Label = true, c.Subject.CommonName
				if !info.Occupied {
					info.Occupied = true // firmware before 5.3 has no key metadata
					info.KeyType, _ = hsm.KeyTypeOf(c.PublicKey)
				}
			} else if isTransport(err) {
				return err
			}
			if info.Occupied {
				out = append(out, info)
			}
		}
		return nil
	})
	return out, err
}

// keyPolicy is what every CA key gets: the PIN once per session, which the appliance
// can satisfy unattended, and never a touch, which it cannot.
var keyPolicy = piv.Key{PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyNever}

// occupied reports whether the slot holds a key (t.mu held).
func occupied(yk *piv.YubiKey, slot piv.Slot) (bool, error) {
	_, err := yk.KeyInfo(slot)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, piv.ErrNotFound):
		return false, nil
	}
	var sw interface{ Status() uint16 }
	if errors.As(err, &sw) && (sw.Status() == 0x6d00 || sw.Status() == 0x6a81) {
		// Firmware before 5.3 cannot say; a certificate is the best hint.
		_, cerr := yk.Certificate(slot)
		return cerr == nil, nil
	}
	return false, err
}

// prepareSlot refuses an occupied slot unless overwrite, and returns the management
// key that writing a key needs (t.mu held).
func (t *Token) prepareSlot(yk *piv.YubiKey, slot piv.Slot, name string, overwrite bool) ([]byte, error) {
	used, err := occupied(yk, slot)
	if err != nil {
		return nil, err
	}
	if used && !overwrite {
		return nil, fmt.Errorf("%w: %s/%s holds a key (use overwrite to replace it)", hsm.ErrExists, t.id, name)
	}
	return t.managementKey(yk)
}

// Generate implements hsm.Token.
func (t *Token) Generate(ctx context.Context, name string, kt hsm.KeyType, opts hsm.KeyOptions) (crypto.PublicKey, error) {
	slot, name, err := ParseSlot(name)
	if err != nil {
		return nil, err
	}
	var pub crypto.PublicKey
	err = t.do(ctx, func(yk *piv.YubiKey) error {
		alg, err := algorithm(kt, yk.Version())
		if err != nil {
			return err
		}
		mk, err := t.prepareSlot(yk, slot, name, opts.Overwrite)
		if err != nil {
			return err
		}
		k := keyPolicy
		k.Algorithm = alg
		pub, err = yk.GenerateKey(mk, slot, k)
		return err
	})
	return pub, err
}

// Import implements hsm.Importer.
func (t *Token) Import(ctx context.Context, name string, key crypto.Signer, opts hsm.KeyOptions) (crypto.PublicKey, error) {
	slot, name, err := ParseSlot(name)
	if err != nil {
		return nil, err
	}
	kt, err := hsm.KeyTypeOf(key.Public())
	if err != nil {
		return nil, err
	}
	err = t.do(ctx, func(yk *piv.YubiKey) error {
		if _, err := algorithm(kt, yk.Version()); err != nil {
			return err
		}
		mk, err := t.prepareSlot(yk, slot, name, opts.Overwrite)
		if err != nil {
			return err
		}
		return yk.SetPrivateKeyInsecure(mk, slot, key, keyPolicy)
	})
	if err != nil {
		return nil, err
	}
	return key.Public(), nil
}

// PublicKey implements hsm.Token.
func (t *Token) PublicKey(ctx context.Context, name string) (crypto.PublicKey, error) {
	slot, name, err := ParseSlot(name)
	if err != nil {
		return nil, err
	}
	var pub crypto.PublicKey
	err = t.do(ctx, func(yk *piv.YubiKey) error {
		ki, err := yk.KeyInfo(slot)
		if err == nil && ki.PublicKey != nil {
			pub = ki.PublicKey
			return nil
		}
		if c, cerr := yk.Certificate(slot); cerr == nil {
			pub = c.PublicKey
			return nil
		}
		if err != nil && !errors.Is(err, piv.ErrNotFound) {
			return err
		}
		return fmt.Errorf("%w: no key in %s/%s", hsm.ErrNotFound, t.id, name)
	})
	return pub, err
}

// Signer implements hsm.Token.
func (t *Token) Signer(ctx context.Context, name string) (crypto.Signer, error) {
	slot, name, err := ParseSlot(name)
	if err != nil {
		return nil, err
	}
	pub, err := t.PublicKey(ctx, name)
	if err != nil {
		return nil, err
	}
	if _, err := hsm.KeyTypeOf(pub); err != nil {
		return nil, err
	}
	return &signer{t: t, slot: slot, pub: pub}, nil
}

type signer struct {
	t    *Token
	slot piv.Slot
	pub  crypto.PublicKey
}

func (s *signer) Public() crypto.PublicKey { return s.pub }

// Sign signs inside the card with one APDU when the PIN is verified in the card's
// session (PIN policy once); otherwise, or when the card says it is not (reset by
// another program), it checks and verifies the PIN first.
func (s *signer) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var sig []byte
	err := s.t.do(ctx, func(yk *piv.YubiKey) error {
		var err error
		if s.t.verified {
			sig, err = s.sign(yk, piv.KeyAuth{PINPolicy: piv.PINPolicyNever}, rand, digest, opts)
			if !securityStatus(err) {
				return err
			}
			s.t.verified = false
		}
		pin, err := s.t.pinFor()
		if err != nil {
			return err
		}
		sig, err = s.sign(yk, piv.KeyAuth{PIN: pin, PINPolicy: piv.PINPolicyOnce}, rand, digest, opts)
		if err == nil {
			s.t.pinSet, s.t.verified = true, true
		}
		return err
	})
	return sig, err
}

func (s *signer) sign(yk *piv.YubiKey, auth piv.KeyAuth, rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	priv, err := yk.PrivateKey(s.slot, s.pub, auth)
	if err != nil {
		return nil, err
	}
	ps, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: the key in %s cannot sign", hsm.ErrUnsupported, s.slot)
	}
	return ps.Sign(rand, digest, opts)
}

// securityStatus tells a card's "security status not satisfied" (6982): the PIN is
// not verified in its session.
func securityStatus(err error) bool {
	var sw interface{ Status() uint16 }
	return errors.As(err, &sw) && sw.Status() == 0x6982
}

// StoreCertificate implements hsm.CertificateStore: the certificate goes into the slot's data
// object, so yubico-piv-tool and ykman show what the appliance provisioned.
func (t *Token) StoreCertificate(ctx context.Context, name string, cert *x509.Certificate) error {
	slot, _, err := ParseSlot(name)
	if err != nil {
		return err
	}
	return t.do(ctx, func(yk *piv.YubiKey) error {
		mk, err := t.managementKey(yk)
		if err != nil {
			return err
		}
		return yk.SetCertificate(mk, slot, cert)
	})
}

// Certificate implements hsm.CertificateStore.
func (t *Token) Certificate(ctx context.Context, name string) (*x509.Certificate, error) {
	slot, _, err := ParseSlot(name)
	if err != nil {
		return nil, err
	}
	var c *x509.Certificate
	err = t.do(ctx, func(yk *piv.YubiKey) error {
		c, err = yk.Certificate(slot)
		return err
	})
	return c, err
}

// Attest returns the attestation of a key generated in the slot: the slot's
// attestation certificate and the card's f9 certificate, checked against the
// attestation roots.
func (t *Token) Attest(ctx context.Context, name string) ([]*x509.Certificate, error) {
	slot, _, err := ParseSlot(name)
	if err != nil {
		return nil, err
	}
	var chain []*x509.Certificate
	err = t.do(ctx, func(yk *piv.YubiKey) error {
		sc, err := yk.Attest(slot)
		if err != nil {
			return err
		}
		ac, err := yk.AttestationCertificate()
		if err != nil {
			return err
		}
		v := piv.Verifier{Roots: t.p.opts.AttestationRoots}
		a, err := v.Verify(ac, sc)
		if err != nil {
			return fmt.Errorf("attestation of %s/%s does not verify: %w", t.id, name, err)
		}
		if a.Serial != t.serial {
			return fmt.Errorf("attestation of %s/%s names serial %d", t.id, name, a.Serial)
		}
		chain = []*x509.Certificate{sc, ac}
		return nil
	})
	return chain, err
}

// Close releases the card.
func (t *Token) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.release()
	return nil
}
