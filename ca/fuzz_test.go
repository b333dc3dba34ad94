package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fuzz targets for provisioning-certificate and CSR handling and the CA
// policy checks. Everything is built from fixed inputs so the corpus entries
// in testdata/fuzz stay meaningful across runs: the provisioning template is
// signed with Ed25519 (deterministic), the slot key is a fixed P-256 scalar,
// and the CA's validity starts at fuzzNow.

var fuzzNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

type fuzzCA struct {
	slotKey *ecdsa.PrivateKey
	// tmplDER is a provisioning certificate as the PKI would send it:
	// critical basicConstraints CA pathlen 1, critical keyUsage, critical
	// nameConstraints (iot.example.com), a policy and a CRL DP.
	tmplDER []byte
	root    *x509.Certificate // SelfSign(tmpl, slotKey, fuzzNow)
	issuer  *Issuer
	csrs    map[string][]byte // CSR DER seeds
	tbss    map[string][]byte // TBSCertificate seeds
}

func fixedEC(curve elliptic.Curve, b byte) *ecdsa.PrivateKey {
	k, err := ecdsa.ParseRawPrivateKey(curve, bytes.Repeat([]byte{b}, (curve.Params().BitSize+7)/8))
	if err != nil {
		panic(err)
	}
	return k
}

var fuzzCASetup = sync.OnceValues(func() (*fuzzCA, error) {
	fc := &fuzzCA{slotKey: fixedEC(elliptic.P256(), 0x11), csrs: map[string][]byte{}, tbss: map[string][]byte{}}
	pkiKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x42}, ed25519.SeedSize))
	notBefore := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tmpl := &x509.Certificate{
		SerialNumber:                big.NewInt(0x1234),
		Subject:                     pkix.Name{CommonName: "IoT HSM Fuzz Root CA", Organization: []string{"IoT HSM Lab"}, Country: []string{"DE"}},
		NotBefore:                   notBefore,
		NotAfter:                    notBefore.Add(20 * 365 * 24 * time.Hour),
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  1,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		PermittedDNSDomains:         []string{labDomain},
		PermittedDNSDomainsCritical: true,
		PolicyIdentifiers:           []asn1.ObjectIdentifier{labPolicy},
		Policies:                    []x509.OID{mustOID(labPolicy)},
		CRLDistributionPoints:       []string{labCRL},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pkiKey.Public(), pkiKey)
	if err != nil {
		return nil, err
	}
	fc.tmplDER = der
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if fc.root, err = SelfSign(parsed, fc.slotKey, fuzzNow); err != nil {
		return nil, err
	}
	fc.issuer = &Issuer{Cert: fc.root, Signer: fc.slotKey}

	// CSR seeds: a device leaf inside the name constraints, one outside, an
	// intermediate CA from the template, an Ed25519 one and a small RSA key.
	leafKey := fixedEC(elliptic.P256(), 0x22)
	csr := func(name string, key crypto.Signer, r *x509.CertificateRequest) error {
		der, err := x509.CreateCertificateRequest(rand.Reader, r, key)
		fc.csrs[name] = der
		return err
	}
	if err := csr("leaf", leafKey, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device-1." + labDomain},
		DNSNames: []string{"device-1." + labDomain}}); err != nil {
		return nil, err
	}
	if err := csr("outside", leafKey, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "evil.example.org"},
		DNSNames: []string{"evil.example.org"}}); err != nil {
		return nil, err
	}
	if err := csr("ed25519", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x33}, 32)), &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "ed"}, EmailAddresses: []string{"ops@" + labDomain}}); err != nil {
		return nil, err
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		return nil, err
	}
	if err := csr("rsa1024", rsa1024, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "small"}}); err != nil {
		return nil, err
	}
	interm, err := CSR(parsed, fixedEC(elliptic.P384(), 0x44))
	if err != nil {
		return nil, err
	}
	fc.csrs["intermediate"] = interm.Raw

	// TBS seeds, as a PKI would build them for this CA.
	ski, _ := SubjectKeyID(leafKey.Public())
	tbs := func(name string, c *x509.Certificate, pub crypto.PublicKey) error {
		c.SignatureAlgorithm = x509.ECDSAWithSHA256
		der, err := x509.CreateCertificate(rand.Reader, c, fc.root, pub, fc.slotKey)
		if err != nil {
			return err
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		fc.tbss[name] = cert.RawTBSCertificate
		return nil
	}
	leafTmpl := func() *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "device-1." + labDomain},
			NotBefore: fuzzNow, NotAfter: fuzzNow.Add(365 * 24 * time.Hour), SubjectKeyId: ski,
			DNSNames: []string{"device-1." + labDomain}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	}
	if err := tbs("leaf", leafTmpl(), leafKey.Public()); err != nil {
		return nil, err
	}
	sub := leafTmpl()
	sub.Subject = pkix.Name{CommonName: "Fuzz Issuing CA"}
	sub.DNSNames, sub.ExtKeyUsage = nil, nil
	sub.BasicConstraintsValid, sub.IsCA, sub.MaxPathLen, sub.MaxPathLenZero = true, true, 0, true
	sub.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	if err := tbs("subca", sub, leafKey.Public()); err != nil {
		return nil, err
	}
	late := leafTmpl()
	late.NotAfter = fc.root.NotAfter.Add(time.Hour)
	if err := tbs("outlives-ca", late, leafKey.Public()); err != nil {
		return nil, err
	}
	out := leafTmpl()
	out.DNSNames = []string{"device-1.example.org"}
	if err := tbs("outside", out, leafKey.Public()); err != nil {
		return nil, err
	}
	return fc, nil
})

func fuzzCAFor(t testing.TB) *fuzzCA {
	fc, err := fuzzCASetup()
	if err != nil {
		t.Fatalf("fuzz CA: %v", err)
	}
	return fc
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func isAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// FuzzParsePEM: the PEM parsers never panic, never return nothing without an
// error, refuse only with ErrBadPEM, and what they accept re-encodes to the
// same DER. CheckImport on whatever certificates parse refuses only with its
// typed errors and accepts only a CA certificate valid now that verifies to a
// known root or to itself.
func FuzzParsePEM(f *testing.F) {
	fc := fuzzCAFor(f)
	rootPEM, tmplPEM := EncodeCertificatePEM(fc.root), pemOf(pemCertificate, fc.tmplDER)
	f.Add(rootPEM)
	f.Add(tmplPEM)
	f.Add(append(append([]byte{}, tmplPEM...), rootPEM...))
	f.Add(pemOf(pemCSR, fc.csrs["leaf"]))
	f.Add(pemOf(pemCSRLegacy, fc.csrs["intermediate"]))
	f.Add(append([]byte("junk\n"), rootPEM...))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n\nMAA=\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----BEGIN CERTIFICATE-----\n" + string(rootPEM)))
	f.Fuzz(func(t *testing.T, data []byte) {
		fc := fuzzCAFor(t)
		c, err := ParseCertificatePEM(data)
		if (c == nil) == (err == nil) {
			t.Fatalf("ParseCertificatePEM returned cert %v and error %v", c != nil, err)
		}
		if err != nil && !errors.Is(err, ErrBadPEM) {
			t.Fatalf("ParseCertificatePEM refusal is not ErrBadPEM: %v", err)
		}
		cs, errs := ParseCertificatesPEM(data)
		if errs != nil && (cs != nil || !errors.Is(errs, ErrBadPEM)) {
			t.Fatalf("ParseCertificatesPEM refusal: %d certs, %v", len(cs), errs)
		}
		if errs == nil {
			if len(cs) == 0 {
				t.Fatal("ParseCertificatesPEM accepted no certificate")
			}
			again, err := ParseCertificatesPEM(EncodeCertificatesPEM(cs))
			if err != nil || len(again) != len(cs) {
				t.Fatalf("re-encoded chain: %d certs, %v", len(again), err)
			}
			for i := range cs {
				if cs[i] == nil || !bytes.Equal(cs[i].Raw, again[i].Raw) {
					t.Fatalf("certificate %d changed on re-encoding", i)
				}
			}
		}
		if c != nil {
			if errs != nil || len(cs) != 1 || !bytes.Equal(cs[0].Raw, c.Raw) {
				t.Fatalf("ParseCertificatePEM accepted what ParseCertificatesPEM reads as %d certs, %v", len(cs), errs)
			}
			again, err := ParseCertificatePEM(EncodeCertificatePEM(c))
			if err != nil || !bytes.Equal(again.Raw, c.Raw) {
				t.Fatalf("re-encoded certificate: %v", err)
			}
		}
		r, err := ParseCSRPEM(data)
		if (r == nil) == (err == nil) || err != nil && !errors.Is(err, ErrBadPEM) {
			t.Fatalf("ParseCSRPEM returned CSR %v and error %v", r != nil, err)
		}
		if r != nil {
			again, err := ParseCSRPEM(EncodeCSRPEM(r))
			if err != nil || !bytes.Equal(again.Raw, r.Raw) {
				t.Fatalf("re-encoded CSR: %v", err)
			}
		}
		for i, cert := range cs {
			err := CheckImport(cert, cs[i+1:], []*x509.Certificate{fc.root}, cert.PublicKey, fuzzNow)
			if err != nil {
				if !isAny(err, ErrKeyMismatch, ErrNotCA, ErrNotValidNow, ErrChain) {
					t.Fatalf("CheckImport refusal is untyped: %v", err)
				}
				continue
			}
			if !isCA(cert) || fuzzNow.Before(cert.NotBefore) || fuzzNow.After(cert.NotAfter) {
				t.Fatalf("CheckImport accepted a certificate that is no CA or not valid now")
			}
			roots := x509.NewCertPool()
			roots.AddCert(fc.root)
			if isSelfSigned(cert) {
				roots.AddCert(cert)
			}
			inter := x509.NewCertPool()
			for _, o := range cs[i+1:] {
				if isSelfSigned(o) {
					roots.AddCert(o)
				} else {
					inter.AddCert(o)
				}
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: fuzzNow,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				t.Fatalf("CheckImport accepted a certificate that does not verify: %v", err)
			}
		}
	})
}

// FuzzProvisioningCert: a fuzzed provisioning certificate (the DER of a valid
// template, mutated, wrapped as PEM) is refused with ErrBadPEM, or SelfSign
// and CSR on it either refuse with a typed error or produce a root / CSR that
// verifies under the slot key, has the template's subject byte for byte and
// carries the template's extensions (SKI and AKI recomputed).
func FuzzProvisioningCert(f *testing.F) {
	fc := fuzzCAFor(f)
	f.Add(fc.tmplDER)
	f.Add(fc.root.Raw)
	if prov, err := MakeProvisioningCert(labOptions("IoT HSM Lab Root CA", 0)); err == nil {
		if b, _ := pem.Decode(prov); b != nil {
			f.Add(b.Bytes)
		}
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		fc := fuzzCAFor(t)
		tmpl, err := ParseCertificatePEM(pemOf(pemCertificate, der))
		if (tmpl == nil) == (err == nil) {
			t.Fatalf("ParseCertificatePEM returned cert %v and error %v", tmpl != nil, err)
		}
		if err != nil {
			if !errors.Is(err, ErrBadPEM) {
				t.Fatalf("ParseCertificatePEM refusal is not ErrBadPEM: %v", err)
			}
			return
		}
		var wantExts []pkix.Extension
		for _, e := range tmpl.Extensions {
			if !e.Id.Equal(oidExtSubjectKeyID) && !e.Id.Equal(oidExtAuthorityKeyID) {
				wantExts = append(wantExts, e)
			}
		}
		ski, _ := SubjectKeyID(fc.slotKey.Public())

		root, err := SelfSign(tmpl, fc.slotKey, fuzzNow)
		if err != nil {
			if root != nil || !isAny(err, ErrNotCA, ErrUnsupportedKey, errTemplateValidityEmpty) {
				t.Fatalf("SelfSign refusal is untyped or carries a certificate: %v", err)
			}
		} else {
			if err := root.CheckSignatureFrom(root); err != nil {
				t.Fatalf("SelfSign: root does not verify: %v", err)
			}
			if !bytes.Equal(root.RawSubject, tmpl.RawSubject) || !bytes.Equal(root.RawIssuer, tmpl.RawSubject) {
				t.Fatalf("SelfSign: subject %q / issuer %q, template %q", root.Subject, root.Issuer, tmpl.Subject)
			}
			if !fc.slotKey.PublicKey.Equal(root.PublicKey) || !isCA(root) {
				t.Fatal("SelfSign: root is not a CA for the slot key")
			}
			if !root.NotBefore.Equal(fuzzNow) {
				t.Fatalf("SelfSign: notBefore %s, want %s", root.NotBefore, fuzzNow)
			}
			switch d := tmpl.NotAfter.Sub(tmpl.NotBefore); {
			case tmpl.NotAfter.Equal(noWellDefinedExpiration):
				if !root.NotAfter.Equal(noWellDefinedExpiration) {
					t.Fatalf("SelfSign: notAfter %s, want 99991231235959Z", root.NotAfter)
				}
			case d < time.Duration(math.MaxInt64): // a saturated Duration cannot be kept
				if got := root.NotAfter.Sub(root.NotBefore); got != d {
					t.Fatalf("SelfSign: validity %s, template's %s", got, d)
				}
			}
			if !bytes.Equal(root.SubjectKeyId, ski) || !bytes.Equal(root.AuthorityKeyId, ski) {
				t.Fatalf("SelfSign: SKI %x AKI %x, want %x", root.SubjectKeyId, root.AuthorityKeyId, ski)
			}
			var gotExts []pkix.Extension
			for _, e := range root.Extensions {
				if !e.Id.Equal(oidExtSubjectKeyID) && !e.Id.Equal(oidExtAuthorityKeyID) {
					gotExts = append(gotExts, e)
				}
			}
			if !sameExtensions(gotExts, wantExts) {
				t.Fatalf("SelfSign: extensions\n%v\nwant\n%v", gotExts, wantExts)
			}
		}

		req, err := CSR(tmpl, fc.slotKey)
		if err != nil {
			if req != nil || !isAny(err, ErrNotCA, ErrUnsupportedKey) {
				t.Fatalf("CSR refusal is untyped or carries a CSR: %v", err)
			}
			return
		}
		if err := req.CheckSignature(); err != nil {
			t.Fatalf("CSR does not verify: %v", err)
		}
		if !bytes.Equal(req.RawSubject, tmpl.RawSubject) || !fc.slotKey.PublicKey.Equal(req.PublicKey) {
			t.Fatalf("CSR: subject %q, template %q, or not the slot key", req.Subject, tmpl.Subject)
		}
		if !sameExtensions(req.Extensions, wantExts) {
			t.Fatalf("CSR: extensions\n%v\nwant\n%v", req.Extensions, wantExts)
		}
	})
}

func sameExtensions(a, b []pkix.Extension) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Id.Equal(b[i].Id) || a[i].Critical != b[i].Critical || !bytes.Equal(a[i].Value, b[i].Value) {
			return false
		}
	}
	return true
}

// checkIssued is what every certificate the CA signs must satisfy: it
// verifies to the CA (alone, and through x509.Verify at its notBefore), lies
// inside the CA's validity, is issued by the CA's name and does not exceed
// the CA's path length.
func checkIssued(t *testing.T, fc *fuzzCA, cert *x509.Certificate) {
	t.Helper()
	if err := cert.CheckSignatureFrom(fc.root); err != nil {
		t.Fatalf("issued certificate does not verify against the CA: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(fc.root)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: cert.NotBefore,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("issued certificate does not verify through the CA: %v", err)
	}
	if cert.NotBefore.Before(fc.root.NotBefore) || cert.NotAfter.After(fc.root.NotAfter) || !cert.NotBefore.Before(cert.NotAfter) {
		t.Fatalf("issued validity %s..%s outside the CA's %s..%s", cert.NotBefore, cert.NotAfter, fc.root.NotBefore, fc.root.NotAfter)
	}
	if !bytes.Equal(cert.RawIssuer, fc.root.RawSubject) {
		t.Fatalf("issued by %q, CA is %q", cert.Issuer, fc.root.Subject)
	}
	if cert.IsCA && !(cert.MaxPathLen == 0 && cert.MaxPathLenZero) {
		t.Fatalf("CA certificate with path length %d under a CA with path length 1", cert.MaxPathLen)
	}
	if !cert.IsCA && cert.KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Fatal("keyCertSign in a certificate that is not a CA")
	}
	if k, ok := cert.PublicKey.(*rsa.PublicKey); ok && k.N.BitLen() < minRSABits {
		t.Fatalf("certified an RSA key of %d bits", k.N.BitLen())
	}
}

func splitNames(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' })
}

// FuzzIssueCertificate: with a fuzzed CSR (DER) and profile, IssueCertificate
// refuses with ErrBadPEM (via ParseCSRPEM), ErrPolicy or ErrProfile, or
// yields a certificate for the CSR's subject and key that verifies to the CA
// and lies inside its validity. The spellings parsers refuse only with
// ErrProfile.
func FuzzIssueCertificate(f *testing.F) {
	fc := fuzzCAFor(f)
	year := int64(365 * 24)
	f.Add(fc.csrs["leaf"], false, year, "digital_signature", "server_auth,client_auth")
	f.Add(fc.csrs["outside"], false, year, "", "")
	f.Add(fc.csrs["ed25519"], false, int64(1), "digital_signature,key_agreement", "email_protection")
	f.Add(fc.csrs["rsa1024"], false, year, "", "")
	f.Add(fc.csrs["intermediate"], true, 5*year, "cert_sign,crl_sign", "")
	f.Add(fc.csrs["intermediate"], false, 50*year, "cert_sign", "any")
	f.Add(fc.csrs["leaf"], false, int64(0), "key_compromise", "bogus")
	f.Add(fc.csrs["leaf"], false, int64(-1), "", "")
	f.Add(fc.csrs["leaf"], false, int64(math.MaxInt64), "", "")
	f.Fuzz(func(t *testing.T, der []byte, isCA bool, hours int64, kus, ekus string) {
		fc := fuzzCAFor(t)
		ku, err := ParseKeyUsage(splitNames(kus))
		if err != nil && (ku != 0 || !errors.Is(err, ErrProfile)) {
			t.Fatalf("ParseKeyUsage refusal: %d, %v", ku, err)
		}
		eku, err := ParseExtKeyUsage(splitNames(ekus))
		if err != nil && (eku != nil || !errors.Is(err, ErrProfile)) {
			t.Fatalf("ParseExtKeyUsage refusal: %v, %v", eku, err)
		}
		reason, err := ParseReason(kus)
		switch {
		case err != nil && !errors.Is(err, ErrProfile):
			t.Fatalf("ParseReason refusal: %v", err)
		case err == nil && (!validReason(reason) || (reason == -1) != (kus == "")):
			t.Fatalf("ParseReason(%q) = %d", kus, reason)
		}

		csr, err := ParseCSRPEM(pemOf(pemCSR, der))
		if err != nil {
			if csr != nil || !errors.Is(err, ErrBadPEM) {
				t.Fatalf("ParseCSRPEM refusal: %v", err)
			}
			return
		}
		p := Profile{IsCA: isCA, Validity: time.Duration(hours) * time.Hour, KeyUsage: ku, ExtKeyUsage: eku}
		cert, err := fc.issuer.IssueCertificate(csr, p, fuzzNow)
		if err != nil {
			if cert != nil || !isAny(err, ErrPolicy, ErrProfile) {
				t.Fatalf("IssueCertificate refusal is untyped or carries a certificate: %v", err)
			}
			return
		}
		checkIssued(t, fc, cert)
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("issued for a CSR whose signature does not verify: %v", err)
		}
		if !bytes.Equal(cert.RawSubject, csr.RawSubject) || !publicKeyEqual(cert.PublicKey, csr.PublicKey) {
			t.Fatalf("issued certificate is not for the CSR's subject and key")
		}
		if cert.IsCA != isCA {
			t.Fatalf("asked IsCA %v, got %v", isCA, cert.IsCA)
		}
	})
}

// FuzzSignTBS: a fuzzed TBSCertificate is refused with ErrPolicy or
// ErrProfile, or signed exactly as given into a certificate that verifies to
// the CA and lies inside its validity.
func FuzzSignTBS(f *testing.F) {
	fc := fuzzCAFor(f)
	for _, name := range []string{"leaf", "subca", "outlives-ca", "outside"} {
		f.Add(fc.tbss[name])
	}
	f.Add(fc.root.RawTBSCertificate)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, tbs []byte) {
		fc := fuzzCAFor(t)
		cert, err := fc.issuer.SignTBS(tbs, fuzzNow)
		if err != nil {
			if cert != nil || !isAny(err, ErrPolicy, ErrProfile) {
				t.Fatalf("SignTBS refusal is untyped or carries a certificate: %v", err)
			}
			return
		}
		if !bytes.Equal(cert.RawTBSCertificate, tbs) {
			t.Fatal("SignTBS signed something other than the TBS it was given")
		}
		if cert.Version != 3 || cert.SerialNumber.Sign() <= 0 || len(cert.UnhandledCriticalExtensions) > 0 {
			t.Fatalf("SignTBS signed version %d, serial %v, unhandled %v", cert.Version, cert.SerialNumber, cert.UnhandledCriticalExtensions)
		}
		checkIssued(t, fc, cert)
	})
}
