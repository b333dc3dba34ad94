package ca

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"os/exec"
	"testing"
	"time"
)

const year = 365 * 24 * time.Hour

// labCA is a two-level lab PKI: the lab root (path length 1, names
// constrained to labDomain) and an issuing CA under it made with
// IssueCertificate itself, with their Issuers.
type labCA struct {
	root, interm     *x509.Certificate
	rootIs, intermIs *Issuer
}

// newLabCA builds a lab PKI whose keys are the n-th and n+1-th of kind.
func newLabCA(t *testing.T, kind string, n int, now time.Time) labCA {
	t.Helper()
	// The lab root plus the CA/Browser Forum's domain-validated policy,
	// which zlint wants in every TLS CA and subscriber certificate.
	opts := labOptions("IoT HSM Lab Root CA", 1)
	opts.PolicyOIDs = append(opts.PolicyOIDs, asn1.ObjectIdentifier{2, 23, 140, 1, 2, 1})
	prov, err := MakeProvisioningCert(opts)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := ParseCertificatePEM(prov)
	if err != nil {
		t.Fatal(err)
	}
	rootKey := testKey(t, kind, n)
	root, err := SelfSign(tmpl, rootKey, now)
	if err != nil {
		t.Fatal(err)
	}
	rootIs := &Issuer{Cert: root, Signer: rootKey}
	intermKey := testKey(t, kind, n+1)
	req, err := CSR(labTemplate(t, "IoT HSM Lab Issuing CA", 0), intermKey)
	if err != nil {
		t.Fatal(err)
	}
	interm, err := rootIs.IssueCertificate(req, Profile{
		IsCA:                   true,
		Validity:               5 * year,
		CRLDistributionPoints:  []string{labCRL},
		IssuingCertificateURLs: []string{"http://pki.example.com/lab-root.crt"},
	}, now)
	if err != nil {
		t.Fatalf("issue the intermediate: %v", err)
	}
	return labCA{
		root:     root,
		interm:   interm,
		rootIs:   rootIs,
		intermIs: &Issuer{Cert: interm, Chain: []*x509.Certificate{root}, Signer: intermKey},
	}
}

// newCSR makes a CSR for key with the given common name and DNS names.
func newCSR(t *testing.T, key crypto.Signer, cn string, dns ...string) *x509.CertificateRequest {
	t.Helper()
	// Only a CN: an organization would make the CA/Browser Forum profile
	// demand locality and country as well, which is beside the point.
	return newCSRFor(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: dns})
}

func newCSRFor(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// selfSigned makes a root from a hand-written template, for CA properties
// SelfSign's provisioning path does not offer (exclusions, IP and URI
// constraints, no keyUsage).
func selfSigned(t *testing.T, tmpl *x509.Certificate, key crypto.Signer) *x509.Certificate {
	t.Helper()
	ski, err := SubjectKeyID(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	sigAlg, err := SignatureAlgorithm(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(1)
	}
	tmpl.SubjectKeyId = ski
	tmpl.SignatureAlgorithm = sigAlg
	tmpl.BasicConstraintsValid = true
	tmpl.IsCA = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// opensslResult runs openssl and returns its combined output and error,
// for the cases that are supposed to fail.
func opensslResult(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is required for these tests: %v", err)
	}
	return exec.Command(path, args...).CombinedOutput()
}

// opensslOK runs openssl, requires success and returns combined output
// (several subcommands report verification on stderr).
func opensslOK(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := opensslResult(t, args...)
	if err != nil {
		t.Fatalf("openssl %v: %v\n%s", args, err, out)
	}
	return out
}

// wantPolicy asserts a refusal with ErrPolicy (and not ErrProfile) and no
// result.
func wantPolicy[T any](t *testing.T, got T, err error) {
	t.Helper()
	wantErr(t, got, err, ErrPolicy)
}

func wantProfile[T any](t *testing.T, got T, err error) {
	t.Helper()
	wantErr(t, got, err, ErrProfile)
}

func wantErr[T any](t *testing.T, got T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	other := ErrProfile
	if want == ErrProfile {
		other = ErrPolicy
	}
	if errors.Is(err, other) {
		t.Fatalf("err = %v is both %v and %v", err, want, other)
	}
	switch v := any(got).(type) {
	case *x509.Certificate:
		if v != nil {
			t.Fatalf("got a certificate along with error %v", err)
		}
	case []byte:
		if v != nil {
			t.Fatalf("got %d bytes along with error %v", len(v), err)
		}
	}
	t.Logf("refused as expected: %v", err)
}

func containsAll(t *testing.T, out []byte, want ...string) {
	t.Helper()
	for _, w := range want {
		if !bytes.Contains(out, []byte(w)) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}
