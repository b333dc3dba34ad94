package ca

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"slices"
	"testing"
	"time"
)

func TestSelfSignRoot(t *testing.T) {
	for _, kind := range keyKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			tmpl := labTemplate(t, "IoT HSM Lab Root CA "+kind, 1)
			key := testKey(t, kind, 0)
			now := time.Now()
			root, err := SelfSign(tmpl, key, now)
			if err != nil {
				t.Fatalf("SelfSign: %v", err)
			}

			t.Run("go verify", func(t *testing.T) {
				pool := x509.NewCertPool()
				pool.AddCert(root)
				if _, err := root.Verify(x509.VerifyOptions{
					Roots:       pool,
					CurrentTime: now,
					KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
				}); err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if err := CheckImport(root, nil, nil, key.Public(), now); err != nil {
					t.Fatalf("CheckImport of own root: %v", err)
				}
			})
			t.Run("openssl verify", func(t *testing.T) {
				opensslVerify(t, root, root)
			})
			t.Run("follows template", func(t *testing.T) {
				checkRootFollowsTemplate(t, root, tmpl, key.Public(), now)
				if root.SignatureAlgorithm != wantSigAlg[kind] {
					t.Errorf("signature algorithm %v, want %v", root.SignatureAlgorithm, wantSigAlg[kind])
				}
				// What a user reading the certificate would look for.
				if !root.IsCA || root.MaxPathLen != 1 {
					t.Errorf("IsCA %v MaxPathLen %d, want CA with path length 1", root.IsCA, root.MaxPathLen)
				}
				if !slices.Equal(root.PermittedDNSDomains, []string{labDomain}) {
					t.Errorf("permitted DNS domains %v", root.PermittedDNSDomains)
				}
				if !slices.Equal(root.CRLDistributionPoints, []string{labCRL}) {
					t.Errorf("CRL distribution points %v", root.CRLDistributionPoints)
				}
				if len(root.PolicyIdentifiers) != 1 || !root.PolicyIdentifiers[0].Equal(labPolicy) {
					t.Errorf("policies %v, want %v", root.PolicyIdentifiers, labPolicy)
				}
			})
			t.Run("zlint", func(t *testing.T) {
				if problems := zlintProblems(t, root.Raw); len(problems) > 0 {
					t.Errorf("zlint errors:\n%s", problems)
				}
			})
		})
	}
}

// checkRootFollowsTemplate asserts the SelfSign contract: template subject
// and extensions byte for byte, SKI/AKI for the slot key, template validity
// length starting at now, sane serial.
func checkRootFollowsTemplate(t *testing.T, root, tmpl *x509.Certificate, pub any, now time.Time) {
	t.Helper()
	if !bytes.Equal(root.RawSubject, tmpl.RawSubject) {
		t.Errorf("subject %x, want template's %x", root.RawSubject, tmpl.RawSubject)
	}
	if !bytes.Equal(root.RawIssuer, tmpl.RawSubject) {
		t.Errorf("issuer %x, want template's subject %x", root.RawIssuer, tmpl.RawSubject)
	}
	if !publicKeyEqual(root.PublicKey, pub) {
		t.Error("root does not carry the slot key")
	}

	counts := map[string]int{}
	for _, e := range root.Extensions {
		counts[e.Id.String()]++
	}
	for oid, n := range counts {
		if n != 1 {
			t.Errorf("extension %s appears %d times", oid, n)
		}
	}
	isKeyID := func(e pkix.Extension) bool {
		return e.Id.Equal(oidExtSubjectKeyID) || e.Id.Equal(oidExtAuthorityKeyID)
	}
	want := slices.DeleteFunc(slices.Clone(tmpl.Extensions), isKeyID)
	got := slices.DeleteFunc(slices.Clone(root.Extensions), isKeyID)
	if len(want) == 0 {
		t.Fatal("template has no extensions to compare")
	}
	if !slices.EqualFunc(got, want, func(a, b pkix.Extension) bool {
		return a.Id.Equal(b.Id) && a.Critical == b.Critical && bytes.Equal(a.Value, b.Value)
	}) {
		t.Errorf("extensions differ from template:\n got %v\nwant %v", got, want)
	}

	ski, err := SubjectKeyID(pub)
	if err != nil {
		t.Fatal(err)
	}
	if counts[oidExtSubjectKeyID.String()] != 1 || !bytes.Equal(root.SubjectKeyId, ski) {
		t.Errorf("SKI %x, want %x exactly once", root.SubjectKeyId, ski)
	}
	if counts[oidExtAuthorityKeyID.String()] != 1 || !bytes.Equal(root.AuthorityKeyId, ski) {
		t.Errorf("AKI %x, want %x exactly once", root.AuthorityKeyId, ski)
	}
	for _, e := range root.Extensions {
		if isKeyID(e) && e.Critical {
			t.Errorf("extension %s is critical", e.Id)
		}
	}

	if want := tmpl.NotAfter.Sub(tmpl.NotBefore); root.NotAfter.Sub(root.NotBefore) != want {
		t.Errorf("validity %s, want template's %s", root.NotAfter.Sub(root.NotBefore), want)
	}
	if want := now.UTC().Truncate(time.Second); !root.NotBefore.Equal(want) {
		t.Errorf("NotBefore %s, want %s", root.NotBefore, want)
	}
	if root.SerialNumber.Sign() <= 0 || len(root.SerialNumber.Bytes()) > 16 {
		t.Errorf("serial %x is not a positive 128-bit number", root.SerialNumber)
	}
	if root.SerialNumber.Cmp(tmpl.SerialNumber) == 0 {
		t.Error("root reuses the template's serial")
	}
}

// A template from a PKI that sets more than the lab one does: SAN, EKU, AIA,
// a private extension, and fields Go would turn into extensions of its own.
// All must come through once and unchanged.
func TestSelfSignCopiesForeignExtensions(t *testing.T) {
	pkiKey := testKey(t, "p256", 5)
	private := pkix.Extension{Id: asn1.ObjectIdentifier{2, 999, 7}, Value: []byte{0x05, 0x00}}
	tmplDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		Subject:               pkix.Name{CommonName: "Foreign CA", Organization: []string{"Elsewhere"}, Country: []string{"FR"}},
		NotBefore:             time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:              []string{"ca.example.com"},
		OCSPServer:            []string{"http://ocsp.example.com"},
		IssuingCertificateURL: []string{"http://pki.example.com/issuer.crt"},
		AuthorityKeyId:        []byte{1, 2, 3, 4},
		ExtraExtensions:       []pkix.Extension{private},
	}, &x509.Certificate{Subject: pkix.Name{CommonName: "Foreign Root"}, SubjectKeyId: []byte{1, 2, 3, 4}, BasicConstraintsValid: true, IsCA: true}, pkiKey.Public(), pkiKey)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := x509.ParseCertificate(tmplDER)
	if err != nil {
		t.Fatal(err)
	}
	key := testKey(t, "p384", 0)
	now := time.Now()
	root, err := SelfSign(tmpl, key, now)
	if err != nil {
		t.Fatalf("SelfSign: %v", err)
	}
	checkRootFollowsTemplate(t, root, tmpl, key.Public(), now)
	if !slices.Equal(root.DNSNames, []string{"ca.example.com"}) || len(root.ExtKeyUsage) != 2 || len(root.OCSPServer) != 1 {
		t.Errorf("SAN %v EKU %v OCSP %v not carried over", root.DNSNames, root.ExtKeyUsage, root.OCSPServer)
	}
	// The template's AKI pointed at its own issuer; the root's must not.
	if bytes.Equal(root.AuthorityKeyId, tmpl.AuthorityKeyId) {
		t.Error("root kept the template's AKI")
	}
	// 2025-01-01 to 2030-01-01 is five years with one leap day, whenever
	// the template was issued.
	if got := root.NotAfter.Sub(root.NotBefore); got != (5*365+1)*24*time.Hour {
		t.Errorf("validity %s", got)
	}
}

func TestSelfSignKeepsNoExpiration(t *testing.T) {
	tmpl := labTemplate(t, "Forever CA", -1)
	tmpl.NotAfter = noWellDefinedExpiration
	root, err := SelfSign(tmpl, testKey(t, "p256", 0), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !root.NotAfter.Equal(noWellDefinedExpiration) {
		t.Errorf("NotAfter %s, want 99991231235959Z", root.NotAfter)
	}
}

func TestSelfSignRejects(t *testing.T) {
	p256 := testKey(t, "p256", 0)
	lab := labTemplate(t, "Lab CA", 0)

	leafTmpl := func(ku x509.KeyUsage, isCA bool) *x509.Certificate {
		pkiKey := testKey(t, "p256", 5)
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber:          big.NewInt(7),
			Subject:               pkix.Name{CommonName: "Not a CA"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(time.Hour),
			BasicConstraintsValid: true,
			IsCA:                  isCA,
			KeyUsage:              ku,
		}, &x509.Certificate{Subject: pkix.Name{CommonName: "PKI"}}, pkiKey.Public(), pkiKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	handBuilt := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "Hand built"},
		NotBefore:             time.Now(),
		NotAfter:              time.Now().Add(time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	emptyValidity := labTemplate(t, "Lab CA", 0)
	emptyValidity.NotAfter = emptyValidity.NotBefore

	tests := []struct {
		name string
		tmpl *x509.Certificate
		key  crypto.Signer
		want error
	}{
		{"leaf template", leafTmpl(x509.KeyUsageDigitalSignature, false), p256, ErrNotCA},
		{"CA without keyCertSign", leafTmpl(x509.KeyUsageDigitalSignature|x509.KeyUsageCRLSign, true), p256, ErrNotCA},
		{"fields only, no raw extensions", handBuilt, p256, ErrNotCA},
		{"ed25519 key", lab, edKey, ErrUnsupportedKey},
		{"P-224 key", lab, testKey(t, "p224", 0), ErrUnsupportedKey},
		{"P-521 key", lab, testKey(t, "p521", 0), ErrUnsupportedKey},
		{"empty validity", emptyValidity, p256, errTemplateValidityEmpty},
		{"nil template", nil, p256, errTemplateMissing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root, err := SelfSign(tc.tmpl, tc.key, time.Now())
			if !errors.Is(err, tc.want) {
				t.Errorf("SelfSign: got %v, %v; want error %v", root, err, tc.want)
			}
			req, err := CSR(tc.tmpl, tc.key)
			if tc.want == errTemplateValidityEmpty {
				// A CSR carries no validity; the PKI decides it.
				if err != nil {
					t.Errorf("CSR: %v", err)
				}
			} else if !errors.Is(err, tc.want) {
				t.Errorf("CSR: got %v, %v; want error %v", req, err, tc.want)
			}
		})
	}
}
