package console

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// slotShow reads a slot the way an operator's script would.
func (l *lab) slotShow(t *testing.T, slotID string) protocol.SlotShow {
	t.Helper()
	code, stdout, stderr := l.console(t, "--json", "slot.show", "--slot-id", slotID)
	if code != 0 {
		t.Fatalf("slot.show %s: exit %d, %s", slotID, code, stderr)
	}
	var reply protocol.Reply
	var sl protocol.SlotShow
	if err := json.Unmarshal([]byte(stdout), &reply); err != nil || json.Unmarshal(reply.Result, &sl) != nil {
		t.Fatalf("slot.show %s: %v: %s", slotID, err, stdout)
	}
	return sl
}

// TestWizardRootAndIntermediateOnATerminal: an operator at a terminal, from an empty
// token: a root by pasting the provisioning certificate, then an intermediate whose
// CSR the root signs (through the console's sign, by a short ca_id) while the wizard
// waits for it. openssl verifies both.
func TestWizardRootAndIntermediateOnATerminal(t *testing.T) {
	l := startLab(t)
	rootProv, err := os.ReadFile(l.provCert(t, "Lab Root CA", 1))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM := filepath.Join(l.dir, "root.pem")

	term := newTerminal(t)
	done := term.run("--broker", l.url, "--device", l.device, "provision")
	term.expect("  1  " + l.hsmID)
	term.answer("HSM (number, id or serial) [1]: ", "")
	term.expect("free:  01 02 03")
	term.answer("Slot [01]: ", "")
	term.answer("(g/i/e) [generate]: ", "g")
	term.answer("Key type (rsa2048, rsa3072, rsa4096, p256, p384) [p256]: ", "p256")
	term.expect("done in") // the progress of the generation, on the terminal
	term.expect("Key ready in " + l.hsmID + "/01: p256, ca_id ")
	term.answer("end with an empty line): ", strings.TrimSpace(string(rootProv))+"\n")
	term.expect("provisioning certificate: CN=Lab Root CA")
	term.answer("(root/csr) [root]: ", "")
	term.expect("Provisioning complete: " + l.hsmID + "/01 is provisioned.")
	term.expect("0 CN=Lab Root CA (self-signed root)")
	term.answer("Save the certificate and its chain to [", rootPEM)
	term.expect("Certificate and chain written to " + rootPEM)
	if code := term.exit(done); code != 0 {
		t.Fatalf("exit %d:\n%s", code, term.screen.String())
	}
	opensslVerify(t, rootPEM, rootPEM)
	root := l.slotShow(t, l.hsmID+"/01")

	// The intermediate: slot 02 is now the first free one.
	issuingProv := l.provCert(t, "Lab Issuing CA", 0)
	csrPath := filepath.Join(l.dir, "issuing.csr")
	done = term.run("--broker", l.url, "--device", l.device, "provision")
	term.answer("HSM (number, id or serial) [1]: ", l.tok.Serial[:6]) // a short name
	term.expect("01     provisioned, CN=Lab Root CA")
	term.answer("Slot [02]: ", "")
	term.answer("(g/i/e) [generate]: ", "")
	term.answer("[p256]: ", "p384")
	term.answer("end with an empty line): ", issuingProv)
	term.answer("(root/csr) [root]: ", "csr")
	term.answer("Write the CSR to [", csrPath)
	term.expect("-----END CERTIFICATE REQUEST-----")
	term.expect("written to " + csrPath)
	term.expect("Signed certificate (PEM file or paste; empty line: stop here and go on later): ")

	// The root signs the CSR meanwhile, asked by the start of its ca_id.
	issuingPEM := filepath.Join(l.dir, "issuing.pem")
	code, _, stderr := run(t, "", "--broker", l.url, "sign", "--ca-id", root.CAID[:8], "--kind", "certificate", "--csr", csrPath,
		"--is-ca", "--max-path-len", "0", "--key-usage", "cert_sign,crl_sign", "--validity", "12h", "--out", issuingPEM)
	if code != 0 {
		t.Fatalf("sign: exit %d, %s", code, stderr)
	}
	term.answer("", issuingPEM)
	term.answer("Its issuers' certificates (PEM file or paste; empty line: the appliance has them): ", rootPEM)
	term.expect("Provisioning complete: " + l.hsmID + "/02 is provisioned.")
	term.expect("0 CN=Lab Issuing CA (issued by CN=Lab Root CA)")
	term.expect("1 CN=Lab Root CA (self-signed root)")
	bundle := filepath.Join(l.dir, "issuing-bundle.pem")
	term.answer("Save the certificate and its chain to [", bundle)
	if code := term.exit(done); code != 0 {
		t.Fatalf("exit %d:\n%s", code, term.screen.String())
	}
	opensslVerify(t, rootPEM, issuingPEM)
	opensslVerify(t, rootPEM, bundle) // its first certificate: the intermediate
	if sl := l.slotShow(t, l.hsmID+"/02"); sl.State != "provisioned" || sl.KeyType != "p384" || sl.Subject != "CN=Lab Issuing CA" {
		t.Errorf("slot 02: %+v", sl)
	}
}

// TestWizardResumesAndScripts: without a terminal every answer is a flag, a missing
// one is a usage error naming it, and a slot left half-way (csr_pending after a
// first run, key_ready after a bare slot.provision) is taken up where it stopped.
func TestWizardResumesAndScripts(t *testing.T) {
	l := startLab(t)
	short := l.tok.Serial[:5]
	rootProv, issuingProv := l.provCert(t, "Root", 1), l.provCert(t, "Issuing", 0)

	code, _, stderr := l.console(t, "provision", "--hsm", short, "--slot", "01")
	if code != 2 || !strings.Contains(stderr, "--provisioning-cert is required") {
		t.Fatalf("missing flag: exit %d, %s", code, stderr)
	}
	// Refused before anything was made: the slot has no record.
	if code, _, stderr := l.console(t, "slot.show", "--slot-id", l.hsmID+"/01"); code != 1 || !strings.Contains(stderr, "not_found") {
		t.Fatalf("after the usage error, slot.show: exit %d, %s", code, stderr)
	}
	// A key made by hand: the slot is key_ready, and the wizard goes on at the
	// provisioning certificate.
	if code, _, stderr := l.console(t, "slot.provision", "--hsm", short, "--slot", "01", "--mode", "generate", "--key-type", "p256"); code != 0 {
		t.Fatalf("slot.provision: %s", stderr)
	}
	rootPEM := filepath.Join(l.dir, "root.pem")
	code, stdout, stderr := l.console(t, "provision", "--slot", short+"/01", "--provisioning-cert", rootProv, "--as", "root", "--out", rootPEM)
	if code != 0 || !strings.Contains(stdout, "holds a key (p256, ca_id ") || !strings.Contains(stdout, "going on from there") ||
		!strings.Contains(stdout, "0 CN=Root (self-signed root)") {
		t.Fatalf("resume at key_ready: exit %d\n%s\n%s", code, stdout, stderr)
	}
	opensslVerify(t, rootPEM, rootPEM)

	// The intermediate, in two runs: the CSR, then (later) the certificate.
	csrPath := filepath.Join(l.dir, "issuing.csr")
	code, stdout, stderr = l.console(t, "provision", "--hsm", "1", "--slot", "02", "--key-type", "p384",
		"--provisioning-cert", issuingProv, "--as", "csr", "--csr-out", csrPath)
	if code != 0 || !strings.Contains(stdout, "stays csr_pending") || !strings.Contains(stdout, "written to "+csrPath) {
		t.Fatalf("csr run: exit %d\n%s\n%s", code, stdout, stderr)
	}
	issuingPEM := filepath.Join(l.dir, "issuing.pem")
	root := l.slotShow(t, l.hsmID+"/01")
	if code, _, stderr := l.console(t, "sign", "--ca-id", root.CAID[:6], "--kind", "certificate", "--csr", csrPath, "--is-ca",
		"--key-usage", "cert_sign,crl_sign", "--validity", "1h", "--out", issuingPEM); code != 0 {
		t.Fatalf("sign: %s", stderr)
	}
	// Certificate and chain pasted as one bundle file.
	bundleIn := l.write(t, "bundle-in.pem", readFile(t, issuingPEM)+readFile(t, rootPEM))
	code, stdout, stderr = l.console(t, "provision", "--slot", short+"/2", "--certificate", bundleIn, "--csr-out", csrPath)
	if code != 0 || !strings.Contains(stdout, "waits for its signed certificate: going on from there") ||
		!strings.Contains(stdout, "1 CN=Root (self-signed root)") {
		t.Fatalf("resume at csr_pending: exit %d\n%s\n%s", code, stdout, stderr)
	}
	opensslVerify(t, rootPEM, issuingPEM)

	// A provisioned slot is not touched again.
	code, _, stderr = l.console(t, "provision", "--hsm", short, "--slot", "01", "--provisioning-cert", rootProv, "--as", "root")
	if code != 1 || !strings.Contains(stderr, "already provisioned") || !strings.Contains(stderr, "subject CN=Root") {
		t.Errorf("provisioned slot: exit %d, %s", code, stderr)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
