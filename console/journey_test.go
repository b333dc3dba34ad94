package console

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// A refusal reads as one sentence: the code once, no Go package prefixes, and where
// the slot's state is in the way, what to run next.
func TestDeviceErrorsSayWhatToDo(t *testing.T) {
	l := startLab(t)
	slot := l.hsmID + "/01"
	code, _, stderr := l.console(t, "slot.provision", "--hsm", l.hsmID, "--slot", "01", "--mode", "generate")
	if code != exitUsage || !strings.Contains(stderr, "--key-type") || !strings.Contains(stderr, "p256") {
		t.Errorf("generate without --key-type: exit %d, %q; want 2 naming --key-type and the types", code, stderr)
	}
	if code, _, stderr = l.console(t, "slot.provision", "--hsm", l.hsmID, "--slot", "01", "--mode", "generate", "--key-type", "p256"); code != 0 {
		t.Fatalf("provision: exit %d, %s", code, stderr)
	}
	csr := l.write(t, "leaf.csr", testCSR(t))
	// The wizard reads the same flags the same way, after it has looked at the slot.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalECPrivateKey(key)
	keyFile := l.write(t, "server.key", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})))
	code, _, stderr = l.console(t, "provision", "--slot", slot, "--provisioning-cert", keyFile, "--as", "root")
	if code != exitUsage || !strings.Contains(stderr, "private key") {
		t.Errorf("wizard with a key for the provisioning certificate: exit %d, %q", code, stderr)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"sign on key_ready", []string{"sign", "--slot-id", slot, "--kind", "certificate", "--csr", csr, "--validity", "24h"},
			[]string{"error: conflict: " + slot + " is key_ready: it has no certificate yet", "slot.selfsign", "slot.csr"}},
		{"import_cert on key_ready", []string{"slot.provision", "--hsm", l.hsmID, "--slot", "01", "--mode", "generate", "--key-type", "p256"},
			[]string{"error: conflict: " + slot + " is key_ready: clear it first (slot.clear)", "--overwrite"}},
		{"slot with a slash", []string{"slot.provision", "--hsm", l.hsmID, "--slot", "a/b", "--mode", "generate", "--key-type", "p256"},
			[]string{"error: bad_request: slot \"a/b\": want a slot name"}},
	} {
		code, _, stderr := l.console(t, tc.args...)
		if code != exitFailed {
			t.Errorf("%s: exit %d, %q; want 1", tc.name, code, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: %q does not say %q", tc.name, stderr, w)
			}
		}
		for _, doubled := range []string{"conflict: conflict", "bad_request: bad request", "ca: "} {
			if strings.Contains(stderr, doubled) {
				t.Errorf("%s: %q says %q", tc.name, stderr, doubled)
			}
		}
	}
}

// A private key given where a certificate or a CSR belongs is refused before the
// console connects: with a closed port for a broker, trying to send would exit 3.
func TestPrivateKeyNeverLeaves(t *testing.T) {
	clearEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	broker := "tcp://" + ln.Addr().String()
	ln.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	l := &lab{dir: dir}
	keyFile := l.write(t, "server.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	csrFile := l.write(t, "server.csr", testCSR(t))
	certFile := l.write(t, "cert.pem", testCert(t))
	for name, args := range map[string][]string{
		"selfsign":           {"slot.selfsign", "--slot-id", "h/01", "--provisioning-cert", keyFile},
		"csr":                {"slot.csr", "--slot-id", "h/01", "--provisioning-cert", keyFile},
		"import certificate": {"slot.import_cert", "--slot-id", "h/01", "--certificate", keyFile},
		"import chain":       {"slot.import_cert", "--slot-id", "h/01", "--certificate", certFile, "--chain", keyFile},
		"sign":               {"sign", "--slot-id", "h/01", "--kind", "certificate", "--csr", keyFile, "--validity", "1h"},
	} {
		code, _, stderr := run(t, "", append([]string{"--broker", broker, "--device", "d"}, args...)...)
		if code != exitUsage || !strings.Contains(stderr, "private key") || !strings.Contains(stderr, "nothing was sent") {
			t.Errorf("%s: exit %d, %q; want 2 saying the private key was not sent", name, code, stderr)
		}
	}
	// The wrong kind of block is named too.
	code, _, stderr := run(t, "", "--broker", broker, "--device", "d", "slot.selfsign", "--slot-id", "h/01", "--provisioning-cert", csrFile)
	if code != exitUsage || !strings.Contains(stderr, "CERTIFICATE REQUEST block; want CERTIFICATE") {
		t.Errorf("a CSR as provisioning certificate: exit %d, %q", code, stderr)
	}
}

// A [[pkcs11]] block that selects nothing is a problem the status document, the
// console's status and the reload reply all name, with what the module does have.
func TestProblemsShownInStatusAndReload(t *testing.T) {
	l := startLabWith(t, func(c *config.Config) {
		c.PKCS11 = append(c.PKCS11, config.PKCS11{Module: c.PKCS11[0].Module, Token: "pkcs11:token=nosuch"})
	})
	want := `pkcs11 token "pkcs11:token=nosuch" matches no token`
	code, out, stderr := l.console(t, "status")
	if code != 0 || !strings.Contains(out, "problem: "+want) || !strings.Contains(out, "1 problem(s)") {
		t.Errorf("status: exit %d, %s%s; want the problem", code, out, stderr)
	}
	_, out, _ = l.console(t, "--json", "status")
	var env struct {
		Result protocol.Status `json:"result"`
	}
	if err := json.Unmarshal([]byte(out), &env); err != nil || len(env.Result.Problems) != 1 || !strings.Contains(env.Result.Problems[0], "(serial "+l.tok.Serial+")") {
		t.Errorf("status problems %q (%v), want one naming the token there is", env.Result.Problems, err)
	}
	code, out, stderr = l.console(t, "reload")
	for _, w := range []string{"reload: applied:", "restart required for: -", "HSMs: 1, 1 present", "problem: " + want} {
		if !strings.Contains(out, w) {
			t.Errorf("reload printed %q, want %q", out, w)
		}
	}
	if code != exitFailed || !strings.Contains(stderr, "1 problem(s)") {
		t.Errorf("reload with a problem: exit %d, %q; want 1", code, stderr)
	}
}

// The results an operator acts on are printed, not hidden: counts that tell
// finished CAs from slots half-way, the audit trail as a table with the head hash,
// and slot.show --out writes the chain the PKI needs with the certificate.
func TestConsoleShowsResults(t *testing.T) {
	l := startLab(t)
	rootProv, intProv := l.provCert(t, "Lab Root", 1), l.provCert(t, "Lab Issuing", 0)
	root, csr := filepath.Join(l.dir, "root.pem"), filepath.Join(l.dir, "int.csr")
	steps := [][]string{
		{"provision", "--slot", l.hsmID + "/01", "--provisioning-cert", rootProv, "--as", "root", "--out", root},
		{"provision", "--slot", l.hsmID + "/02", "--provisioning-cert", intProv, "--as", "csr", "--csr-out", csr},
	}
	for _, args := range steps {
		if code, out, stderr := l.console(t, args...); code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out, stderr)
		}
	}
	_, out, _ := l.console(t, "status")
	if !strings.Contains(out, "online, 1/1 CAs connected, 1 slot(s) being provisioned") {
		t.Errorf("status line: %s", out)
	}
	intCert := filepath.Join(l.dir, "int.pem")
	if code, _, stderr := l.console(t, "sign", "--slot-id", l.hsmID+"/01", "--kind", "certificate", "--csr", csr, "--is-ca",
		"--max-path-len", "0", "--key-usage", "cert_sign,crl_sign", "--validity", "12h", "--out", intCert); code != 0 {
		t.Fatalf("sign: %s", stderr)
	}
	if code, _, stderr := l.console(t, "slot.import_cert", "--slot-id", l.hsmID+"/02", "--certificate", intCert, "--chain", root); code != 0 {
		t.Fatalf("import: %s", stderr)
	}
	shown := filepath.Join(l.dir, "shown.pem")
	if code, _, stderr := l.console(t, "slot.show", "--slot-id", l.hsmID+"/02", "--out", shown); code != 0 || !strings.Contains(stderr, "2 certificates") {
		t.Fatalf("slot.show --out: exit %d, %s", code, stderr)
	}
	text := readFile(t, shown)
	if n := strings.Count(text, "-----BEGIN CERTIFICATE-----"); n != 2 || !strings.HasSuffix(text, readFile(t, root)) {
		t.Errorf("slot.show --out wrote %d certificates, want the intermediate and its root", n)
	}
	opensslVerify(t, root, shown)

	code, out, stderr := l.console(t, "audit.tail")
	if code != 0 || strings.Contains(out, "{") || !strings.Contains(out, "SEQ") || !strings.Contains(out, "slot.import_cert") {
		t.Errorf("audit.tail: exit %d\n%s%s", code, out, stderr)
	}
	if !regexp.MustCompile(`(?m)^head: [0-9a-f]{64}$`).MatchString(out) {
		t.Errorf("audit.tail shows no head hash:\n%s", out)
	}
}

// hsm.list prints the HSMs in the order of status (by id), and their slots in order.
func TestHSMListOrdered(t *testing.T) {
	var b strings.Builder
	printHSMList(&b, protocol.HSMListResult{HSMs: []protocol.HSM{
		{ID: "yubikey-2", Slots: []protocol.HSMSlot{{Slot: "9d"}, {Slot: "9a"}}},
		{ID: "pkcs11-b"}, {ID: "pkcs11-a"},
	}})
	out := b.String()
	a, bb, y := strings.Index(out, "pkcs11-a"), strings.Index(out, "pkcs11-b"), strings.Index(out, "yubikey-2")
	if a > bb || bb > y || strings.Index(out, " 9a ") > strings.Index(out, " 9d ") {
		t.Errorf("hsm.list not in order:\n%s", out)
	}
}

// --out is a flag of the commands that have something to write, and only of those;
// hsm.set_pin has no --so-pin-file, which the appliance would always refuse.
func TestFlagsOnlyWhereTheyWork(t *testing.T) {
	clearEnv(t)
	for _, cmd := range []string{"status", "hsm.list", "slot.clear", "audit.tail", "reload", "restart", "ota.status"} {
		code, _, stderr := run(t, "", cmd, "--out", "x.pem")
		if code != exitUsage || !strings.Contains(stderr, "flag provided but not defined: -out") {
			t.Errorf("%s --out: exit %d, %q; want a usage error", cmd, code, stderr)
		}
	}
	code, _, stderr := run(t, "", "hsm.set_pin", "--hsm", "h", "--pin-file", "p", "--so-pin-file", "s")
	if code != exitUsage || !strings.Contains(stderr, "not defined: -so-pin-file") {
		t.Errorf("--so-pin-file: exit %d, %q", code, stderr)
	}
	for _, cmd := range []string{"slot.provision", "slot.selfsign", "slot.csr", "slot.import_cert", "slot.show", "sign"} {
		if _, _, stderr := run(t, "", cmd, "-h"); !strings.Contains(stderr, "-out FILE") {
			t.Errorf("%s -h does not list --out:\n%s", cmd, stderr)
		}
	}
}

// A healthy start publishes its status once the broker session is up, not before:
// no "publish failed" warning at every start.
func TestHealthyStartWarnsNothing(t *testing.T) {
	var logs syncbuf.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	defer slog.SetDefault(old)
	l := startLab(t)
	if code, out, stderr := l.console(t, "status"); code != 0 || !strings.Contains(out, "online") {
		t.Fatalf("status: exit %d, %s%s", code, out, stderr)
	}
	if strings.Contains(logs.String(), "publish failed") {
		t.Errorf("the start logged a failed publish:\n%s", logs.String())
	}
}

// Flags the user typed are named with what they take: a date without a time in a
// --revoked file, and a --broker without its scheme.
func TestInputErrorsNameTheFix(t *testing.T) {
	clearEnv(t)
	l := &lab{dir: t.TempDir()}
	revoked := l.write(t, "revoked.json", `[{"serial": "01", "revoked_at": "2026-01-01", "reason": "key_compromise"}]`)
	code, _, stderr := run(t, "", "--broker", "tcp://127.0.0.1:1", "--device", "d", "sign", "--slot-id", "h/01", "--kind", "crl",
		"--number", "1", "--next-update-in", "1h", "--revoked", revoked)
	if code != exitUsage || !strings.Contains(stderr, `"2026-01-01" is not a time`) || !strings.Contains(stderr, "2026-01-31T00:00:00Z") ||
		strings.Contains(stderr, "2006") {
		t.Errorf("date-only revoked_at: exit %d, %q", code, stderr)
	}
	code, _, stderr = run(t, "", "--broker", "127.0.0.1:18883", "--device", "d", "status")
	if code != exitUsage || !strings.Contains(stderr, "--broker") || !strings.Contains(stderr, `"mqtts://127.0.0.1:18883"`) ||
		strings.Contains(stderr, "first path segment") {
		t.Errorf("broker without scheme: exit %d, %q", code, stderr)
	}
}
