package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// keyKinds are the slot key types the appliance supports.
var keyKinds = []string{"rsa2048", "rsa3072", "rsa4096", "p256", "p384"}

var wantSigAlg = map[string]x509.SignatureAlgorithm{
	"rsa2048": x509.SHA256WithRSA,
	"rsa3072": x509.SHA256WithRSA,
	"rsa4096": x509.SHA256WithRSA,
	"p256":    x509.ECDSAWithSHA256,
	"p384":    x509.ECDSAWithSHA384,
}

var (
	keyMu    sync.Mutex
	keyCache = map[string]func() (crypto.Signer, error){}
)

// testKey returns the n-th software key of a kind, generated once per test
// binary: RSA 4096 generation takes seconds, and parallel tests can share
// keys as long as they pick distinct n where distinct keys matter.
func testKey(t *testing.T, kind string, n int) crypto.Signer {
	t.Helper()
	id := fmt.Sprintf("%s/%d", kind, n)
	keyMu.Lock()
	gen, ok := keyCache[id]
	if !ok {
		gen = sync.OnceValues(func() (crypto.Signer, error) { return generateKey(kind) })
		keyCache[id] = gen
	}
	keyMu.Unlock()
	key, err := gen()
	if err != nil {
		t.Fatalf("generate %s key: %v", kind, err)
	}
	return key
}

func generateKey(kind string) (crypto.Signer, error) {
	switch kind {
	case "rsa2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "rsa3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "rsa4096":
		return rsa.GenerateKey(rand.Reader, 4096)
	case "p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "p224":
		return ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	case "p521":
		return ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	}
	return nil, fmt.Errorf("unknown key kind %q", kind)
}

var (
	// Under the ITU-T X.660 "example" arc, which is reserved for documentation.
	labPolicy = asn1.ObjectIdentifier{2, 999, 1, 1}
	labDomain = "iot.example.com"
	labCRL    = "http://pki.example.com/lab.crl"
)

// labOptions is the provisioning request a lab PKI would send for a CA.
func labOptions(cn string, maxPathLen int) ProvisioningOptions {
	return ProvisioningOptions{
		Subject: pkix.Name{
			CommonName:   cn,
			Organization: []string{"IoT HSM Lab"},
			Country:      []string{"DE"},
		},
		Validity:              10 * 365 * 24 * time.Hour,
		MaxPathLen:            maxPathLen,
		PermittedDNSDomains:   []string{labDomain},
		PolicyOIDs:            []asn1.ObjectIdentifier{labPolicy},
		CRLDistributionPoints: []string{labCRL},
	}
}

// labTemplate returns a parsed lab provisioning certificate, as the
// appliance would receive it.
func labTemplate(t *testing.T, cn string, maxPathLen int) *x509.Certificate {
	t.Helper()
	data, err := MakeProvisioningCert(labOptions(cn, maxPathLen))
	if err != nil {
		t.Fatalf("MakeProvisioningCert: %v", err)
	}
	tmpl, err := ParseCertificatePEM(data)
	if err != nil {
		t.Fatalf("ParseCertificatePEM(provisioning cert): %v", err)
	}
	return tmpl
}

// labRoot is a self-signed root for the n-th key of kind.
func labRoot(t *testing.T, kind string, n int, now time.Time) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key := testKey(t, kind, n)
	root, err := SelfSign(labTemplate(t, "IoT HSM Lab Root CA", 1), key, now)
	if err != nil {
		t.Fatalf("SelfSign: %v", err)
	}
	return root, key
}

// issue plays the issuing PKI: it signs tmpl for pub with parent's key,
// setting SKI for the new certificate (Go derives AKI from parent).
func issue(t *testing.T, tmpl *x509.Certificate, parent *x509.Certificate, parentKey crypto.Signer, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	ski, err := SubjectKeyID(pub)
	if err != nil {
		t.Fatal(err)
	}
	sigAlg, err := SignatureAlgorithm(parentKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	tmpl.SubjectKeyId = ski
	tmpl.SignatureAlgorithm = sigAlg
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatalf("issue certificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// issueFromCSR signs a CSR the way a PKI would for an intermediate: subject
// and requested extensions as asked.
func issueFromCSR(t *testing.T, req *x509.CertificateRequest, parent *x509.Certificate, parentKey crypto.Signer, now time.Time) *x509.Certificate {
	t.Helper()
	return issue(t, &x509.Certificate{
		RawSubject:      req.RawSubject,
		NotBefore:       now.Add(-time.Minute),
		NotAfter:        now.Add(5 * 365 * 24 * time.Hour),
		ExtraExtensions: req.Extensions,
	}, parent, parentKey, req.PublicKey)
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// openssl runs the openssl command line tool. It is a hard requirement: the
// point is an independent implementation agreeing with ours.
func openssl(t *testing.T, args ...string) []byte {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is required for these tests: %v", err)
	}
	out, err := exec.Command(path, args...).Output()
	if err != nil {
		var stderr []byte
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = ee.Stderr
		}
		t.Fatalf("openssl %v: %v\nstdout: %s\nstderr: %s", args, err, out, stderr)
	}
	return out
}

// opensslVerify checks cert against the trust anchor root with OpenSSL in
// strict RFC 5280 mode.
func opensslVerify(t *testing.T, root, cert *x509.Certificate) {
	t.Helper()
	rootFile := writeFile(t, "root.pem", EncodeCertificatePEM(root))
	certFile := writeFile(t, "cert.pem", EncodeCertificatePEM(cert))
	out := openssl(t, "verify", "-x509_strict", "-CAfile", rootFile, certFile)
	if want := certFile + ": OK\n"; string(out) != want {
		t.Fatalf("openssl verify printed %q, want %q", out, want)
	}
}

// zlintProblems returns the zlint lints with status Error or Fatal, and
// logs warnings so they can be reviewed.
func zlintProblems(t *testing.T, der []byte) []string {
	t.Helper()
	zc, err := zx509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("zcrypto cannot parse certificate: %v", err)
	}
	results := zlint.LintCertificate(zc)
	var problems []string
	for name, r := range results.Results {
		switch r.Status {
		case lint.Error, lint.Fatal:
			problems = append(problems, fmt.Sprintf("%s: %s %s", name, r.Status, r.Details))
		case lint.Warn:
			t.Logf("zlint warning %s: %s", name, r.Details)
		}
	}
	sort.Strings(problems)
	return problems
}
