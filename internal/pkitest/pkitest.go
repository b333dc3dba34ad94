// Package pkitest checks certificates the way a relying party would: with the real
// openssl command and with zlint. For tests only.
package pkitest

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

func writePEM(t testing.TB, path string, certs ...*x509.Certificate) {
	t.Helper()
	var data []byte
	for _, c := range certs {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// OpenSSLVerify runs `openssl verify` on cert with roots as the trust anchors and
// intermediates as untrusted certificates, failing the test when it does not verify.
// openssl must be installed (make deps); a missing openssl fails, never skips.
func OpenSSLVerify(t testing.TB, cert *x509.Certificate, roots []*x509.Certificate, intermediates ...*x509.Certificate) {
	t.Helper()
	dir := t.TempDir()
	args := []string{"verify", "-x509_strict", "-CAfile", filepath.Join(dir, "roots.pem")}
	writePEM(t, args[3], roots...)
	if len(intermediates) > 0 {
		writePEM(t, filepath.Join(dir, "untrusted.pem"), intermediates...)
		args = append(args, "-untrusted", filepath.Join(dir, "untrusted.pem"))
	}
	writePEM(t, filepath.Join(dir, "cert.pem"), cert)
	args = append(args, filepath.Join(dir, "cert.pem"))
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl verify %s: %v\n%s", cert.Subject, err, out)
	}
}

// LintProblems returns the zlint lints that report an error or a fatal result.
func LintProblems(t testing.TB, cert *x509.Certificate) []string {
	t.Helper()
	zc, err := zx509.ParseCertificate(cert.Raw)
	if err != nil {
		t.Fatalf("zcrypto cannot parse the certificate: %v", err)
	}
	var bad []string
	for name, r := range zlint.LintCertificate(zc).Results {
		if r.Status == lint.Error || r.Status == lint.Fatal {
			bad = append(bad, name+": "+r.Details)
		}
	}
	sort.Strings(bad)
	return bad
}
