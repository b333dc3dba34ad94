package console

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// revoke keeps the operator's revocation list and signs each CRL with the number
// after the CA's last one; the appliance refuses a number that does not grow.
func TestRevokeBuildsListAndNumbersCRLs(t *testing.T) {
	l := startLab(t)
	slotID := l.hsmID + "/01"
	if code, _, stderr := l.console(t, "slot.provision", "--hsm", l.hsmID, "--slot", "01", "--mode", "generate", "--key-type", "p256"); code != 0 {
		t.Fatalf("slot.provision: %d %s", code, stderr)
	}
	rootFile := filepath.Join(l.dir, "root.pem")
	if code, _, stderr := l.console(t, "slot.selfsign", "--slot-id", slotID, "--provisioning-cert", l.provCert(t, "Revoking Root", 0), "--out", rootFile); code != 0 {
		t.Fatalf("slot.selfsign: %d %s", code, stderr)
	}
	list := filepath.Join(l.dir, "revoked.json")
	revoke := func(out string, extra ...string) (int, string) {
		args := append([]string{"revoke", "--slot-id", slotID, "--list", list, "--next-update-in", "1h", "--out", out}, extra...)
		code, _, stderr := l.console(t, args...)
		return code, stderr
	}
	crl1, crl2 := filepath.Join(l.dir, "1.crl"), filepath.Join(l.dir, "2.crl")
	if code, stderr := revoke(crl1, "--serial", "0A", "--reason", "key_compromise"); code != 0 {
		t.Fatalf("first revoke: %d %s", code, stderr)
	}
	if code, stderr := revoke(crl2, "--serial", "0x1f"); code != 0 || !strings.Contains(stderr, "CRL number 2 with 2 revoked") {
		t.Fatalf("second revoke: %d %s", code, stderr)
	}
	c1, c2 := readCRL(t, crl1, rootFile), readCRL(t, crl2, rootFile)
	if c1.Number.Int64() != 1 || len(c1.RevokedCertificateEntries) != 1 || c2.Number.Int64() != 2 || len(c2.RevokedCertificateEntries) != 2 {
		t.Fatalf("CRLs: #%v with %d, #%v with %d", c1.Number, len(c1.RevokedCertificateEntries), c2.Number, len(c2.RevokedCertificateEntries))
	}
	if e := c2.RevokedCertificateEntries[0]; e.SerialNumber.Int64() != 10 || e.ReasonCode != 1 {
		t.Fatalf("first entry: serial %v reason %d", e.SerialNumber, e.ReasonCode)
	}
	before, _ := os.ReadFile(list)
	var entries []protocol.RevokedArg
	if err := json.Unmarshal(before, &entries); err != nil || len(entries) != 2 || entries[1].RevokedAt.IsZero() {
		t.Fatalf("list file: %v %s", err, before)
	}

	// The same serial again is refused locally; the list stays as it was.
	if code, stderr := revoke(filepath.Join(l.dir, "x.crl"), "--serial", "a"); code != exitUsage || !strings.Contains(stderr, "already on") {
		t.Fatalf("duplicate serial: %d %s", code, stderr)
	}
	if after, _ := os.ReadFile(list); string(after) != string(before) {
		t.Fatal("a refused revoke changed the list")
	}
	// A CRL number that does not grow is refused by the appliance, with the last one.
	code, _, stderr := l.console(t, "sign", "--slot-id", slotID, "--kind", "crl", "--number", "2", "--next-update-in", "1h")
	if code != exitFailed || !strings.Contains(stderr, "conflict") || !strings.Contains(stderr, "greater than 2") {
		t.Fatalf("CRL number 2 again: %d %s", code, stderr)
	}
}

func readCRL(t *testing.T, path, rootFile string) *x509.RevocationList {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "X509 CRL" {
		t.Fatalf("%s is no PEM CRL", path)
	}
	list, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, _ := os.ReadFile(rootFile)
	rb, _ := pem.Decode(rootPEM)
	root, err := x509.ParseCertificate(rb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := list.CheckSignatureFrom(root); err != nil {
		t.Fatalf("%s does not verify under the root: %v", path, err)
	}
	return list
}
