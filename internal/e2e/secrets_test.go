package e2e

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/secrets"
)

// startSealed is an appliance over a SoftHSM2 token whose PIN is in no
// configuration: only the secrets store can unlock it.
func startSealed(t *testing.T, brokerURL, deviceID string, tok *softhsm.Token, stateDir, keyFile string) *appliance {
	t.Helper()
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	a := start(t, brokerURL, deviceID, options{stateDir: stateDir, secretsKey: keyFile,
		pkcs11: []config.PKCS11{{Module: tok.Module, Token: "pkcs11:serial=" + tok.Serial}}})
	a.tok = tok
	return a
}

// captureLogs sends the process's log to a buffer (and the test log) until the test
// ends.
func captureLogs(t *testing.T) *syncbuf.Buffer {
	t.Helper()
	buf := &syncbuf.Buffer{}
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() {
		slog.SetDefault(prev)
		if t.Failed() {
			t.Logf("log:\n%s", buf.String())
		}
	})
	return buf
}

func hsmPIN(t *testing.T, op *operator, a *appliance) protocol.PINStatus {
	t.Helper()
	for _, h := range ok[protocol.HSMListResult](t, op.call(a, protocol.CmdHSMList, struct{}{})).HSMs {
		if h.ID == a.hsmID {
			return h.PIN
		}
	}
	t.Fatalf("%s not in hsm.list", a.hsmID)
	return protocol.PINStatus{}
}

func fileMode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestPersistedPINUnlocksAfterRestart: hsm.set_pin with persist over MQTT on a token
// whose PIN is in no configuration; the appliance restarts on the same state
// directory and key file and the token is unlocked without the operator. The PIN is
// never in the sealed file, the log or a reply. A wrong key file applies nothing; a
// stored PIN the token no longer takes is tried once, deleted and logged.
func TestPersistedPINUnlocksAfterRestart(t *testing.T) {
	for _, b := range brokers(t) {
		t.Run(b.name, func(t *testing.T) { persistedPINUnlocksAfterRestart(t, b.name, b.url) })
	}
}

func persistedPINUnlocksAfterRestart(t *testing.T, name, url string) {
	logs := captureLogs(t)
	tok := softhsmtest.New(t, "persist-"+name)
	// An operator's own PIN, unlike any other string in the logs.
	const pin = "Vq8-operator-PIN-5521"
	if out, err := tok.Tool("--login", "--pin", tok.PIN, "--change-pin", "--new-pin", pin); err != nil {
		t.Fatalf("pkcs11-tool --change-pin: %v\n%s", err, out)
	}
	tok.PIN = "" // in no configuration
	stateDir := t.TempDir()
	keyFile := filepath.Join(t.TempDir(), "etc", "iot-hsm", "secrets.key")
	sealed := filepath.Join(stateDir, "secrets.enc")
	devID := "persist-" + name

	a := startSealed(t, url, devID, tok, stateDir, keyFile)
	op := newOperator(t, url)
	if p := hsmPIN(t, op, a); p.Set {
		t.Fatal("the token is unlocked before any PIN was given")
	}
	failed(t, op.call(a, protocol.CmdSlotProvision, protocol.ProvisionArgs{HSM: a.hsmID, Slot: "01", Mode: "generate", KeyType: "p256"}),
		protocol.CodePINRequired)

	// Refused, and nothing stored: a management key is never persisted.
	r := op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: a.hsmID, PIN: pin, Persist: true,
		ManagementKey: "010203040506070801020304050607080102030405060708"})
	failed(t, r, protocol.CodeBadRequest)
	if !strings.Contains(r.Error.Message, "never stored") {
		t.Fatalf("the refusal does not say why: %q", r.Error.Message)
	}
	for _, f := range []string{keyFile, sealed} {
		if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s exists before any PIN was persisted (%v)", f, err)
		}
	}

	res := ok[protocol.SetPINResult](t, op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: a.hsmID, PIN: pin, Persist: true}))
	if !res.PIN.Set {
		t.Fatalf("set_pin: %+v", res)
	}
	root := ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: a.hsmID, Slot: "01", Mode: "generate", KeyType: "p256"}))
	a.stop()

	for _, f := range []string{keyFile, sealed} {
		if m := fileMode(t, f); m != 0o600 {
			t.Fatalf("%s has mode %v, want 0600", f, m)
		}
	}
	sealedBefore, _ := os.ReadFile(sealed)
	if bytes.Contains(sealedBefore, []byte(pin)) {
		t.Fatalf("the sealed file holds the PIN in clear:\n%s", sealedBefore)
	}
	stateFiles, _ := os.ReadDir(stateDir)
	for _, e := range stateFiles {
		if data, err := os.ReadFile(filepath.Join(stateDir, e.Name())); err == nil && bytes.Contains(data, []byte(pin)) {
			t.Fatalf("%s in the state directory holds the PIN", e.Name())
		}
	}

	// Restart on the same state directory and key file: no operator.
	a = startSealed(t, url, devID, tok, stateDir, keyFile)
	if p := hsmPIN(t, op, a); !p.Set {
		t.Fatalf("after restart the token is locked: %+v", p)
	}
	if !strings.Contains(logs.String(), "logged in with the stored PIN") {
		t.Fatal("the stored PIN's use is not in the log")
	}
	ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: a.hsmID, Slot: "02", Mode: "generate", KeyType: "p256"}))
	cert := ok[protocol.CertificateResult](t, op.call(a, protocol.CmdSlotSelfSign,
		protocol.ProvisioningCertArgs{SlotID: root.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Persisted Root", 0))}))
	if !strings.Contains(cert.Certificate, "BEGIN CERTIFICATE") {
		t.Fatal("no certificate")
	}
	a.stop()

	// Another key file (a copy of the state directory on another machine): typed
	// error in the log, nothing applied, the sealed file untouched.
	otherKey := filepath.Join(t.TempDir(), "other.key")
	if err := os.WriteFile(otherKey, bytes.Repeat([]byte{0x5a}, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	a = startSealed(t, url, devID, tok, stateDir, otherKey)
	if p := hsmPIN(t, op, a); p.Set {
		t.Fatal("unlocked with the wrong key file")
	}
	if !strings.Contains(logs.String(), secrets.ErrWrongKey.Error()) {
		t.Fatal("the wrong key file is not in the log")
	}
	// And nothing is stored with it until it is fixed.
	r = op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: a.hsmID, PIN: pin, Persist: true})
	failed(t, r, protocol.CodeInternal)
	if !strings.Contains(r.Error.Message, "not stored") {
		t.Fatalf("store failure reply: %q", r.Error.Message)
	}
	a.stop()
	if after, _ := os.ReadFile(sealed); !bytes.Equal(after, sealedBefore) {
		t.Fatal("the sealed file changed under the wrong key file")
	}

	// The PIN changed while the appliance was down: the stored one is tried once,
	// refused, deleted and logged; the next start does not try it.
	const newPIN = "Wr3-changed-PIN-7710"
	if out, err := tok.Tool("--login", "--pin", pin, "--change-pin", "--new-pin", newPIN); err != nil {
		t.Fatalf("pkcs11-tool --change-pin: %v\n%s", err, out)
	}
	a = startSealed(t, url, devID, tok, stateDir, keyFile)
	if p := hsmPIN(t, op, a); p.Set {
		t.Fatal("unlocked with a stale PIN")
	}
	if !strings.Contains(logs.String(), "stored PIN refused by the token; deleted from the store") {
		t.Fatal("the refused stored PIN is not in the log")
	}
	sec, _ := secrets.New(keyFile, stateDir)
	if ids, err := sec.IDs(); err != nil || len(ids) != 0 {
		t.Fatalf("the refused PIN is still stored: %v %v", ids, err)
	}
	a.stop()

	// The PIN in no log line and no reply, and no other secret either.
	for _, secret := range []string{pin, newPIN} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("a PIN is in the log")
		}
		for id, raws := range op.RawReplies() {
			for _, raw := range raws {
				if bytes.Contains(raw, []byte(secret)) {
					t.Fatalf("a PIN is in the reply to %s: %s", id, raw)
				}
			}
		}
	}
}
