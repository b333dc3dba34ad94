package ca

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"testing"
	"time"
)

func TestCheckImportRejects(t *testing.T) {
	now := time.Now()
	root, rootKey := labRoot(t, "p256", 2, now)
	intermKey := testKey(t, "p256", 3)
	otherKey := testKey(t, "p256", 4)

	req, err := CSR(labTemplate(t, "IoT HSM Lab Issuing CA", 0), intermKey)
	if err != nil {
		t.Fatal(err)
	}
	interm := issueFromCSR(t, req, root, rootKey, now)
	if err := CheckImport(interm, []*x509.Certificate{root}, nil, intermKey.Public(), now); err != nil {
		t.Fatalf("the certificate the negative cases start from is not accepted: %v", err)
	}

	leaf := issue(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "device.iot.example.com"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}, root, rootKey, intermKey.Public())
	noBasicConstraints := issue(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: "No basic constraints"},
		NotBefore: now.Add(-time.Minute),
		NotAfter:  now.Add(time.Hour),
		KeyUsage:  x509.KeyUsageCertSign,
	}, root, rootKey, intermKey.Public())
	caWithoutCertSign := issue(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "CA that may not sign certificates"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
	}, root, rootKey, intermKey.Public())

	// Same subject and template as the real root, different key: the
	// intermediate's signature does not verify against it.
	impostor, err := SelfSign(labTemplate(t, "IoT HSM Lab Root CA", 1), otherKey, now)
	if err != nil {
		t.Fatal(err)
	}
	unrelatedRoot, _ := labRoot(t, "p384", 2, now)

	tampered := append([]byte(nil), interm.Raw...)
	tampered[len(tampered)-1] ^= 0x01
	badSignature, err := x509.ParseCertificate(tampered)
	if err != nil {
		t.Fatal(err)
	}

	expiredRoot, err := SelfSign(labTemplate(t, "IoT HSM Lab Root CA", 1), rootKey, now.Add(-20*365*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}

	chain := []*x509.Certificate{root}
	tests := []struct {
		name         string
		cert         *x509.Certificate
		chain, known []*x509.Certificate
		slotKey      any
		now          time.Time
		want         error
	}{
		{"certificate for another key", interm, chain, nil, otherKey.Public(), now, ErrKeyMismatch},
		{"no slot key", interm, chain, nil, nil, now, ErrKeyMismatch},
		{"key checked before CA-ness", leaf, chain, nil, otherKey.Public(), now, ErrKeyMismatch},
		{"leaf certificate", leaf, chain, nil, intermKey.Public(), now, ErrNotCA},
		{"no basicConstraints", noBasicConstraints, chain, nil, intermKey.Public(), now, ErrNotCA},
		{"keyUsage without keyCertSign", caWithoutCertSign, chain, nil, intermKey.Public(), now, ErrNotCA},
		{"expired", interm, chain, nil, intermKey.Public(), interm.NotAfter.Add(time.Second), ErrNotValidNow},
		{"not yet valid", interm, chain, nil, intermKey.Public(), interm.NotBefore.Add(-time.Second), ErrNotValidNow},
		{"root missing", interm, nil, nil, intermKey.Public(), now, ErrChain},
		{"unrelated root", interm, []*x509.Certificate{unrelatedRoot}, nil, intermKey.Public(), now, ErrChain},
		{"root with same name but other key", interm, []*x509.Certificate{impostor}, nil, intermKey.Public(), now, ErrChain},
		{"bad signature", badSignature, chain, chain, intermKey.Public(), now, ErrChain},
		{"root expired", interm, []*x509.Certificate{expiredRoot}, nil, intermKey.Public(), now, ErrChain},
		{"root in chain is for another key than the known one", interm, []*x509.Certificate{impostor}, []*x509.Certificate{unrelatedRoot}, intermKey.Public(), now, ErrChain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckImport(tc.cert, tc.chain, tc.known, tc.slotKey, tc.now)
			if !errors.Is(err, tc.want) {
				t.Fatalf("CheckImport: %v, want %v", err, tc.want)
			}
			if err.Error() == tc.want.Error() {
				t.Errorf("error %q carries no detail", err)
			}
		})
	}
}

// The validity window is inclusive at both ends, as RFC 5280 4.1.2.5 says.
func TestCheckImportValidityBounds(t *testing.T) {
	now := time.Now()
	root, key := labRoot(t, "p256", 0, now)
	for _, at := range []time.Time{root.NotBefore, root.NotAfter} {
		if err := CheckImport(root, nil, nil, key.Public(), at); err != nil {
			t.Errorf("at %s: %v", at, err)
		}
	}
}

// A two-tier hierarchy on one appliance: root in one slot, an intermediate
// in another, an issuing CA below it. The intermediate is only an
// intermediate, never a trust anchor, whether it arrives in the chain or is
// already known.
func TestCheckImportTwoTier(t *testing.T) {
	now := time.Now()
	root, rootKey := labRoot(t, "p384", 3, now)
	intermKey := testKey(t, "p256", 6)
	subKey := testKey(t, "p256", 7)

	req, err := CSR(labTemplate(t, "IoT HSM Lab Policy CA", 0), intermKey)
	if err != nil {
		t.Fatal(err)
	}
	interm := issueFromCSR(t, req, root, rootKey, now)
	req, err = CSR(labTemplate(t, "IoT HSM Lab Issuing CA", 0), subKey)
	if err != nil {
		t.Fatal(err)
	}
	sub := issueFromCSR(t, req, interm, intermKey, now)

	both := []*x509.Certificate{interm, root}
	for name, tc := range map[string]struct {
		chain, known []*x509.Certificate
		want         error
	}{
		"full chain":                    {both, nil, nil},
		"full chain known":              {nil, both, nil},
		"intermediate sent, root known": {[]*x509.Certificate{interm}, []*x509.Certificate{root}, nil},
		"root sent, intermediate known": {[]*x509.Certificate{root}, []*x509.Certificate{interm}, nil},
		"intermediate only":             {[]*x509.Certificate{interm}, nil, ErrChain},
		"intermediate only, known":      {nil, []*x509.Certificate{interm}, ErrChain},
		"root only":                     {[]*x509.Certificate{root}, nil, ErrChain},
	} {
		t.Run(name, func(t *testing.T) {
			err := CheckImport(sub, tc.chain, tc.known, subKey.Public(), now)
			if !errors.Is(err, tc.want) {
				t.Errorf("CheckImport: %v, want %v", err, tc.want)
			}
		})
	}

	untrusted := writeFile(t, "interm.pem", EncodeCertificatePEM(interm))
	rootFile := writeFile(t, "root.pem", EncodeCertificatePEM(root))
	subFile := writeFile(t, "sub.pem", EncodeCertificatePEM(sub))
	openssl(t, "verify", "-x509_strict", "-CAfile", rootFile, "-untrusted", untrusted, subFile)
}
