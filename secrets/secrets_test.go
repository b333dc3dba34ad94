package secrets

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/iot-hsm/iot-hsm/hsm"
)

const testPIN = "Kx7-stored-pin-0042"

func newStore(t *testing.T) (*Store, string) {
	t.Helper()
	keyDir, stateDir := t.TempDir(), t.TempDir()
	s, err := New(filepath.Join(keyDir, "secrets.key"), stateDir)
	if err != nil {
		t.Fatal(err)
	}
	return s, stateDir
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestRoundTrip(t *testing.T) {
	s, stateDir := newStore(t)
	if _, err := os.Stat(s.KeyFile()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("key file made before first use: %v", err)
	}
	// Nothing stored: loading makes nothing, not even the key.
	if pins, err := s.Load(); err != nil || len(pins) != 0 {
		t.Fatalf("empty store: %v %v", pins, err)
	}
	if err := s.Delete("pkcs11-x"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{s.KeyFile(), s.Path()} {
		if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s made without a Save: %v", f, err)
		}
	}

	if err := s.Save("pkcs11-a", testPIN); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("p", 200)
	if err := s.Save("yubikey-1", long); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("pkcs11-a", testPIN+"2"); err != nil { // replaces
		t.Fatal(err)
	}
	if s.Path() != filepath.Join(stateDir, "secrets.enc") {
		t.Fatalf("sealed file at %s", s.Path())
	}
	for _, f := range []string{s.KeyFile(), s.Path()} {
		if m := mode(t, f); m != 0o600 {
			t.Fatalf("%s has mode %v, want 0600", f, m)
		}
	}
	// The sealed file never holds a PIN in clear, nor the key.
	sealed, _ := os.ReadFile(s.Path())
	key, _ := os.ReadFile(s.KeyFile())
	if len(key) != 32 {
		t.Fatalf("key file holds %d bytes", len(key))
	}
	for _, secret := range [][]byte{[]byte(testPIN), []byte(long[:20]), key, []byte(fmt.Sprintf("%x", key))} {
		if bytes.Contains(sealed, secret) {
			t.Fatalf("sealed file contains a secret in clear:\n%s", sealed)
		}
	}
	// No temporary file left behind.
	if left, _ := filepath.Glob(filepath.Join(stateDir, ".secrets.enc.*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}

	// A second store over the same files (a restart) reads them back.
	s2, err := New(s.KeyFile(), stateDir)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := s2.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(pins) != 2 || pins["pkcs11-a"] != testPIN+"2" || pins["yubikey-1"] != long {
		t.Fatalf("loaded %d PINs, not what was saved", len(pins))
	}
	ids, err := s2.IDs()
	if err != nil || strings.Join(ids, ",") != "pkcs11-a,yubikey-1" {
		t.Fatalf("ids %v %v", ids, err)
	}
	if err := s2.Delete("pkcs11-a"); err != nil {
		t.Fatal(err)
	}
	if pins, err := s.Load(); err != nil || len(pins) != 1 || pins["yubikey-1"] != long {
		t.Fatalf("after delete: %d PINs, %v", len(pins), err)
	}
	if m := mode(t, s.Path()); m != 0o600 {
		t.Fatalf("rewritten sealed file has mode %v", m)
	}
}

// Equal-length PINs, and PINs of different length within one pad block, make
// sealed entries of the same size.
func TestPINLengthHidden(t *testing.T) {
	s, _ := newStore(t)
	if err := s.Save("a", "1234"); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("b", "123456789012345678901234"); err != nil {
		t.Fatal(err)
	}
	f := readSealed(t, s)
	if len(f.Entries["a"].Sealed) != len(f.Entries["b"].Sealed) {
		t.Fatalf("entry sizes differ: %d, %d", len(f.Entries["a"].Sealed), len(f.Entries["b"].Sealed))
	}
}

func readSealed(t *testing.T, s *Store) sealedFile {
	t.Helper()
	data, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	var f sealedFile
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

func writeSealed(t *testing.T, s *Store, f sealedFile) {
	t.Helper()
	data, _ := json.Marshal(f)
	if err := os.WriteFile(s.Path(), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestWrongKeyFile(t *testing.T) {
	s, stateDir := newStore(t)
	if err := s.Save("pkcs11-a", testPIN); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(s.Path())

	// Another appliance's key (or a fresh one after the key file was lost).
	other := filepath.Join(t.TempDir(), "other.key")
	if err := os.WriteFile(other, bytes.Repeat([]byte{7}, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	wrong, err := New(other, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := wrong.Load()
	if !errors.Is(err, ErrWrongKey) || pins != nil {
		t.Fatalf("Load with the wrong key: %v, %d PINs", err, len(pins))
	}
	if err := wrong.Save("pkcs11-b", "9999"); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Save with the wrong key: %v", err)
	}
	after, _ := os.ReadFile(s.Path())
	if !bytes.Equal(before, after) {
		t.Fatal("the sealed file changed under a wrong key")
	}
	if strings.Contains(err.Error(), testPIN) {
		t.Fatal("error carries the PIN")
	}

	// Nothing applied through the applier either.
	tok := &fakeToken{id: "pkcs11-a", pin: testPIN}
	a := NewApplier(wrong, quiet())
	if err := a.Load(); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("applier load: %v", err)
	}
	a.Apply(context.Background(), []hsm.Token{tok})
	if tok.logins() != 0 {
		t.Fatal("a PIN was tried with the wrong key file")
	}

	// The key file missing altogether: ErrKeyFile, and no new key is made over
	// stored PINs.
	missing, _ := New(filepath.Join(t.TempDir(), "none.key"), stateDir)
	if _, err := missing.Load(); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("Load without the key file: %v", err)
	}
	if err := missing.Save("pkcs11-b", "9999"); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("Save without the key file: %v", err)
	}
	if _, err := os.Stat(missing.KeyFile()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a new key file was made over stored PINs")
	}
	// Delete needs no key.
	if err := missing.Delete("pkcs11-a"); err != nil {
		t.Fatal(err)
	}
	// With no entry left, a new key may be made.
	if err := missing.Save("pkcs11-b", "9999"); err != nil {
		t.Fatal(err)
	}
}

func TestKeyFileChecks(t *testing.T) {
	s, stateDir := newStore(t)
	if err := s.Save("pkcs11-a", testPIN); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(s.KeyFile(), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); !errors.Is(err, ErrKeyFile) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable key file: %v", err)
	}
	os.Chmod(s.KeyFile(), 0o600)

	// 64 hex digits work as well as 32 raw bytes.
	raw, _ := os.ReadFile(s.KeyFile())
	hexKey := filepath.Join(t.TempDir(), "hex.key")
	os.WriteFile(hexKey, []byte(fmt.Sprintf("%x\n", raw)), 0o600)
	hs, _ := New(hexKey, stateDir)
	if pins, err := hs.Load(); err != nil || pins["pkcs11-a"] != testPIN {
		t.Fatalf("hex key: %v", err)
	}
	short := filepath.Join(t.TempDir(), "short.key")
	os.WriteFile(short, []byte("too short"), 0o600)
	ss, _ := New(short, stateDir)
	if _, err := ss.Load(); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("short key: %v", err)
	}

	// A key file in the state directory is refused.
	if _, err := New(filepath.Join(stateDir, "k", "secrets.key"), stateDir); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("key inside the state directory: %v", err)
	}
	if _, err := New(filepath.Join(stateDir+"-keys", "secrets.key"), stateDir); err != nil {
		t.Fatalf("a sibling directory is not inside: %v", err)
	}
}

func TestTamperedCiphertext(t *testing.T) {
	s, _ := newStore(t)
	if err := s.Save("pkcs11-a", testPIN); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("pkcs11-b", "another-pin"); err != nil {
		t.Fatal(err)
	}
	orig := readSealed(t, s)

	t.Run("flipped bit", func(t *testing.T) {
		f := readSealed(t, s)
		ct, _ := base64.StdEncoding.DecodeString(f.Entries["pkcs11-a"].Sealed)
		ct[3] ^= 1
		e := f.Entries["pkcs11-a"]
		e.Sealed = base64.StdEncoding.EncodeToString(ct)
		f.Entries["pkcs11-a"] = e
		writeSealed(t, s, f)
		if pins, err := s.Load(); !errors.Is(err, ErrTampered) || pins != nil {
			t.Fatalf("flipped bit: %v", err)
		}
		writeSealed(t, s, orig)
	})
	t.Run("entry moved to another HSM id", func(t *testing.T) {
		f := readSealed(t, s)
		f.Entries["pkcs11-a"], f.Entries["pkcs11-b"] = f.Entries["pkcs11-b"], f.Entries["pkcs11-a"]
		writeSealed(t, s, f)
		if _, err := s.Load(); !errors.Is(err, ErrTampered) {
			t.Fatalf("swapped entries: %v", err)
		}
		writeSealed(t, s, orig)
	})
	t.Run("truncated file", func(t *testing.T) {
		data, _ := os.ReadFile(s.Path())
		os.WriteFile(s.Path(), data[:len(data)/2], 0o600)
		if _, err := s.Load(); !errors.Is(err, ErrTampered) {
			t.Fatalf("truncated: %v", err)
		}
		if err := s.Save("pkcs11-c", "x1234"); !errors.Is(err, ErrTampered) {
			t.Fatalf("save over a damaged file: %v", err)
		}
		writeSealed(t, s, orig)
	})
	if pins, err := s.Load(); err != nil || pins["pkcs11-a"] != testPIN {
		t.Fatalf("restored: %v", err)
	}
}

// fakeToken accepts one PIN and counts logins.
type fakeToken struct {
	hsm.Token
	id      string
	pin     string
	absent  bool
	mu      sync.Mutex
	tries   int
	current string
	offline bool
}

func (f *fakeToken) Info() hsm.Info {
	f.mu.Lock()
	defer f.mu.Unlock()
	return hsm.Info{ID: f.id, Kind: hsm.KindPKCS11, Present: !f.absent, PIN: hsm.PINStatus{Set: f.current != "", Retries: -1}}
}

func (f *fakeToken) Login(_ context.Context, pin string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	if f.offline {
		return fmt.Errorf("%w: gone", hsm.ErrOffline)
	}
	if pin != f.pin {
		return &hsm.PINError{Token: f.id, Retries: 2}
	}
	f.current = pin
	return nil
}

func (f *fakeToken) logins() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tries
}

type fakeProvider struct{ toks []hsm.Token }

func (p *fakeProvider) Tokens(context.Context) ([]hsm.Token, error) { return p.toks, nil }
func (p *fakeProvider) Close() error                                { return nil }

type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(&logBuf{}, nil)) }

func TestApplier(t *testing.T) {
	s, _ := newStore(t)
	for id, pin := range map[string]string{"good": testPIN, "stale": "old-pin-1", "later": "later-pin", "configured": "cfg-pin",
		"flaky": "flaky-pin", "yk": "yk-stored"} {
		if err := s.Save(id, pin); err != nil {
			t.Fatal(err)
		}
	}
	good := &fakeToken{id: "good", pin: testPIN}
	stale := &fakeToken{id: "stale", pin: "the-new-pin"}
	later := &fakeToken{id: "later", pin: "later-pin", absent: true}
	configured := &fakeToken{id: "configured", pin: "cfg-pin", current: "cfg-pin"}
	flaky := &fakeToken{id: "flaky", pin: "flaky-pin", offline: true}
	none := &fakeToken{id: "none", pin: "x"}
	// A PIN in the configuration that the token checks only when used.
	yk := &fakeToken{id: "yk", pin: "yk-stored"}
	logs := &logBuf{}
	a := NewApplier(s, slog.New(slog.NewTextHandler(logs, nil)))
	a.Configured = func(info hsm.Info) bool { return info.ID == "yk" }
	p := a.Wrap(&fakeProvider{toks: []hsm.Token{good, stale, later, configured, flaky, none, yk}})[0]
	ctx := context.Background()

	for i := 0; i < 3; i++ { // several scans: each PIN is still tried once
		if _, err := p.Tokens(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if good.logins() != 1 || !good.Info().PIN.Set {
		t.Fatalf("good: %d logins, set %v", good.logins(), good.Info().PIN.Set)
	}
	if stale.logins() != 1 || stale.Info().PIN.Set {
		t.Fatalf("stale: %d logins", stale.logins())
	}
	if later.logins() != 0 || configured.logins() != 0 || none.logins() != 0 || yk.logins() != 0 {
		t.Fatalf("tried where it should not: later %d configured %d none %d yk %d", later.logins(), configured.logins(), none.logins(), yk.logins())
	}
	if flaky.logins() != 3 {
		// Offline: the PIN never reached the token, so it is tried at each scan
		// until it does.
		t.Fatalf("flaky: %d logins", flaky.logins())
	}
	ids, _ := s.IDs()
	if strings.Join(ids, ",") != "configured,flaky,good,later,yk" {
		t.Fatalf("the rejected PIN was not deleted, or more was: %v", ids)
	}
	if !strings.Contains(logs.String(), "stored PIN refused by the token; deleted from the store") {
		t.Fatalf("rejection not logged:\n%s", logs)
	}

	// A token plugged in later is unlocked when it is first seen.
	later.mu.Lock()
	later.absent = false
	later.mu.Unlock()
	flaky.mu.Lock()
	flaky.offline = false
	flaky.mu.Unlock()
	p.Tokens(ctx)
	p.Tokens(ctx)
	if later.logins() != 1 || !later.Info().PIN.Set || flaky.logins() != 4 || !flaky.Info().PIN.Set {
		t.Fatalf("later %d (set %v), flaky %d", later.logins(), later.Info().PIN.Set, flaky.logins())
	}

	// A restart: the rejected PIN is gone for good.
	a2 := NewApplier(s, quiet())
	stale2 := &fakeToken{id: "stale", pin: "the-new-pin"}
	a2.Apply(ctx, []hsm.Token{stale2})
	if stale2.logins() != 0 {
		t.Fatal("a rejected stored PIN was tried again after a restart")
	}

	for _, pin := range []string{testPIN, "old-pin-1", "later-pin", "cfg-pin", "flaky-pin", "yk-stored"} {
		if strings.Contains(logs.String(), pin) {
			t.Fatalf("a PIN is in the log:\n%s", logs)
		}
	}
}
