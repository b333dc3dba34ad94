package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// What a PKCS#11 token offers beyond the core; a lost method would silently turn
// into ErrUnsupported, so the compiler checks.
var (
	_ hsm.PINLogin         = (*Token)(nil)
	_ hsm.Importer         = (*Token)(nil)
	_ hsm.CertificateStore = (*Token)(nil)
	_ hsm.KeyDeleter       = (*Token)(nil)
	_ hsm.PINCounter       = (*Token)(nil)
)

// Token is one initialised PKCS#11 token. It owns one read-write session, used by one
// operation at a time: the device core runs one worker per token, and the mutex keeps
// direct callers (tests, tools) from interleaving PKCS#11 operations on the session.
type Token struct {
	m      *Module
	serial string
	id     string

	mu         sync.Mutex
	label      string
	model      string
	slotID     uint
	flags      uint
	present    bool
	session    pkcs11.SessionHandle
	open       bool   // session is valid
	generation uint64 // module generation the session belongs to
	pin        string
	pinSet     bool
	keys       map[string]keyHandles // by slot, valid for the current session
}

type keyHandles struct {
	priv pkcs11.ObjectHandle
}

func newToken(m *Module, serial string, ti pkcs11.TokenInfo) *Token {
	return &Token{m: m, serial: serial, id: tokenID(serial), keys: map[string]keyHandles{}}
}

// tokenID makes the protocol's HSM id from the serial: lowercase, and only characters
// that are safe in an MQTT topic level and a slot id.
func tokenID(serial string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(serial) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return fmt.Sprintf("pkcs11-%x", serial)
	}
	return "pkcs11-" + b.String()
}

func trim(s string) string { return strings.TrimRight(strings.TrimSpace(s), "\x00") }

func (t *Token) seen(slot uint, ti pkcs11.TokenInfo) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.slotID != slot && t.open {
		t.dropSession()
	}
	t.slotID = slot
	t.label = trim(ti.Label)
	t.model = strings.TrimSpace(trim(ti.ManufacturerID) + " " + trim(ti.Model))
	t.flags = ti.Flags
	t.present = true
}

// Serial is the token's serial number as the module reports it.
func (t *Token) Serial() string { return t.serial }

// Label is the token label set at initialisation.
func (t *Token) Label() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.label
}

// Info implements hsm.Token.
func (t *Token) Info() hsm.Info {
	t.mu.Lock()
	defer t.mu.Unlock()
	return hsm.Info{
		ID: t.id, Kind: hsm.KindPKCS11, Model: t.model, Serial: t.serial, Present: t.present,
		PIN: hsm.PINStatus{Set: t.pinSet, Retries: retriesFromFlags(t.flags)},
	}
}

// retriesFromFlags reads what PKCS#11 tells of the user PIN counter: only "final try"
// and "locked" are exact; otherwise the count is unknown (-1).
func retriesFromFlags(flags uint) int {
	switch {
	case flags&pkcs11.CKF_USER_PIN_LOCKED != 0:
		return 0
	case flags&pkcs11.CKF_USER_PIN_FINAL_TRY != 0:
		return 1
	}
	return -1
}

// Login checks pin with C_Login and keeps it, so sessions reopened after a re-plug log
// in again without the operator. A rejected PIN is reported once and never retried.
func (t *Token) Login(ctx context.Context, pin string) error {
	if pin == "" {
		return fmt.Errorf("%w: %s: empty PIN", hsm.ErrPINRequired, t.id)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pinSet && t.pin != pin && t.open {
		// A different PIN must be checked for real, not accepted because the
		// session is already logged in with the old one.
		t.m.rw.RLock()
		_ = t.m.ctx.Logout(t.session)
		t.m.rw.RUnlock()
		t.dropSession()
	}
	old, oldSet := t.pin, t.pinSet
	t.pin, t.pinSet = pin, true
	err := t.withSession(ctx, func(pkcs11.SessionHandle) error { return nil })
	if err != nil {
		// A refused new PIN leaves the working one in place: the next session logs
		// in with it again, so one mistyped hsm.set_pin does not take every CA of
		// the token offline. Only a refused working PIN is forgotten, so that it is
		// never presented again.
		t.pin, t.pinSet = old, oldSet
		if (errors.Is(err, hsm.ErrPINIncorrect) || errors.Is(err, hsm.ErrPINBlocked)) && (old == pin || errors.Is(err, hsm.ErrPINBlocked)) {
			t.pin, t.pinSet = "", false
		}
	}
	return err
}

// PINRetries implements hsm.PINCounter from the token's flags, read afresh: PKCS#11
// tells only "final try" (1) and "locked" (0); otherwise the count is unknown (-1).
func (t *Token) PINRetries(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refreshFlags()
	return retriesFromFlags(t.flags), nil
}

// do runs fn with the token's logged-in session.
func (t *Token) do(ctx context.Context, fn func(pkcs11.SessionHandle) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.withSession(ctx, fn)
}

// withSession (t.mu held) opens the session when needed, runs fn, and turns PKCS#11
// failures into hsm errors. When the token turns out to be gone, the session is dropped
// and the token reconnected once: re-plugged tokens come back without a restart.
func (t *Token) withSession(ctx context.Context, fn func(pkcs11.SessionHandle) error) error {
	defer pinThread()()
	if err := ctx.Err(); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		t.m.rw.RLock()
		err := t.ensureSession()
		if err == nil {
			err = fn(t.session)
		}
		t.m.rw.RUnlock()
		if err == nil {
			return nil
		}
		if !isGone(err) {
			return t.mapErr(err)
		}
		t.dropSession()
		if attempt > 0 {
			t.markAbsentLocked(err.Error())
			return fmt.Errorf("%w: %s is not present", hsm.ErrOffline, t.id)
		}
		if !t.reconnect(isStale(err)) {
			t.markAbsentLocked(err.Error())
			return fmt.Errorf("%w: %s is not present", hsm.ErrOffline, t.id)
		}
	}
}

// ensureSession (t.mu and m.rw read-locked) opens and logs in a session for the
// current module generation.
func (t *Token) ensureSession() error {
	if t.open && t.generation == t.m.generation {
		return nil
	}
	t.open = false
	t.keys = map[string]keyHandles{}
	if !t.present {
		return pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT)
	}
	if !t.pinSet {
		return fmt.Errorf("%w: no PIN set for %s", hsm.ErrPINRequired, t.id)
	}
	sh, err := t.m.ctx.OpenSession(t.slotID, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	err = t.m.ctx.Login(sh, pkcs11.CKU_USER, t.pin)
	if err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		_ = t.m.ctx.CloseSession(sh)
		return err
	}
	t.session, t.open, t.generation = sh, true, t.m.generation
	return nil
}

func (t *Token) dropSession() {
	if t.open {
		t.m.rw.RLock()
		_ = t.m.ctx.CloseSession(t.session)
		t.m.rw.RUnlock()
	}
	t.open = false
	t.keys = map[string]keyHandles{}
}

// reconnect (t.mu held) looks for the token by serial, re-initialising the module when
// the plain slot list does not show it, or when object handles went stale (a module
// that caches its token list keeps listing a token whose objects are gone).
func (t *Token) reconnect(stale bool) bool {
	if !stale && t.findSlot() {
		return true
	}
	if err := t.m.reinit(false); err != nil {
		slog.Warn("pkcs11 re-initialise failed", "module", t.m.path, "err", err)
		return false
	}
	return t.findSlot()
}

func (t *Token) findSlot() bool {
	t.m.rw.RLock()
	defer t.m.rw.RUnlock()
	slots, err := t.m.ctx.GetSlotList(true)
	if err != nil {
		return false
	}
	for _, s := range slots {
		ti, err := t.m.ctx.GetTokenInfo(s)
		if err == nil && trim(ti.SerialNumber) == t.serial && ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 {
			t.slotID, t.flags, t.present = s, ti.Flags, true
			return true
		}
	}
	return false
}

func (t *Token) markAbsent(why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.markAbsentLocked(why)
}

func (t *Token) markAbsentLocked(why string) {
	if t.present {
		slog.Warn("pkcs11 token gone", "hsm", t.id, "reason", why)
	}
	t.present = false
	t.open = false
	t.keys = map[string]keyHandles{}
}

// isGone tells errors that mean the token or the library state went away, as opposed
// to a refused operation.
func isGone(err error) bool {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch uint(e) {
	case pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
		pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_SLOT_ID_INVALID,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_USER_NOT_LOGGED_IN:
		return true
	}
	return isStale(err)
}

// isStale tells errors that mean handles cached for the session no longer name
// objects: the token was re-plugged or its objects were changed behind our back.
func isStale(err error) bool {
	return errors.Is(err, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)) ||
		errors.Is(err, pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID))
}

// mapErr (t.mu held) turns PKCS#11 return values into the hsm package's typed errors.
// The PIN is never part of the message.
func (t *Token) mapErr(err error) error {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return err
	}
	switch uint(e) {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
		t.refreshFlags()
		// Retries 0 (the token locked itself on this try) reads as pin_blocked.
		return &hsm.PINError{Token: t.id, Retries: retriesFromFlags(t.flags)}
	case pkcs11.CKR_PIN_LOCKED:
		return &hsm.PINError{Token: t.id, Retries: 0}
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_FUNCTION_NOT_SUPPORTED,
		pkcs11.CKR_CURVE_NOT_SUPPORTED, pkcs11.CKR_DOMAIN_PARAMS_INVALID, pkcs11.CKR_TEMPLATE_INCONSISTENT:
		return fmt.Errorf("%w: %s: %v", hsm.ErrUnsupported, t.id, err)
	}
	return fmt.Errorf("pkcs11 %s: %w", t.id, err)
}

func (t *Token) refreshFlags() {
	defer pinThread()()
	t.m.rw.RLock()
	defer t.m.rw.RUnlock()
	if ti, err := t.m.ctx.GetTokenInfo(t.slotID); err == nil {
		t.flags = ti.Flags
	}
}

// Close logs out and closes the session. The token stays known to its module.
func (t *Token) Close() error {
	defer pinThread()()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open {
		t.m.rw.RLock()
		_ = t.m.ctx.Logout(t.session)
		t.m.rw.RUnlock()
	}
	t.dropSession()
	return nil
}
