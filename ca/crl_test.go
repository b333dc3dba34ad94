package ca

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"
)

func TestCreateCRL(t *testing.T) {
	for _, kind := range []string{"p256", "rsa2048"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			now := time.Now()
			lab := newLabCA(t, kind, 50, now)
			revokedAt := now.Add(-time.Hour)
			revoked := []Revoked{
				{Serial: big.NewInt(0x1001), RevokedAt: revokedAt, Reason: 1},
				{Serial: big.NewInt(0x1002), RevokedAt: revokedAt, Reason: -1},
				{Serial: big.NewInt(0x1003), RevokedAt: revokedAt, Reason: 0},
				{Serial: big.NewInt(0x1004), RevokedAt: revokedAt, Reason: 4},
				{Serial: new(big.Int).Lsh(big.NewInt(1), 127), RevokedAt: revokedAt, Reason: 6},
			}
			wantReason := []int{1, 0, 0, 4, 6}

			for _, level := range []struct {
				name   string
				is     *Issuer
				bundle []*x509.Certificate
			}{
				{"root", lab.rootIs, []*x509.Certificate{lab.root}},
				{"intermediate", lab.intermIs, []*x509.Certificate{lab.interm, lab.root}},
			} {
				t.Run(level.name, func(t *testing.T) {
					number := big.NewInt(42)
					der, err := level.is.CreateCRL(number, now, now.Add(7*24*time.Hour), revoked, now)
					if err != nil {
						t.Fatalf("CreateCRL: %v", err)
					}
					crl, err := x509.ParseRevocationList(der)
					if err != nil {
						t.Fatal(err)
					}
					if err := crl.CheckSignatureFrom(level.is.Cert); err != nil {
						t.Fatalf("CheckSignatureFrom: %v", err)
					}
					if crl.Number.Cmp(number) != 0 {
						t.Errorf("CRL number %v, want %v", crl.Number, number)
					}
					if !bytes.Equal(crl.RawIssuer, level.is.Cert.RawSubject) || !bytes.Equal(crl.AuthorityKeyId, level.is.Cert.SubjectKeyId) {
						t.Error("issuer or AKI is not the CA's")
					}
					if !crl.ThisUpdate.Equal(now.Truncate(time.Second)) || !crl.NextUpdate.Equal(now.Add(7*24*time.Hour).Truncate(time.Second)) {
						t.Errorf("thisUpdate %s nextUpdate %s", crl.ThisUpdate, crl.NextUpdate)
					}
					if len(crl.RevokedCertificateEntries) != len(revoked) {
						t.Fatalf("%d entries, want %d", len(crl.RevokedCertificateEntries), len(revoked))
					}
					for i, e := range crl.RevokedCertificateEntries {
						if e.SerialNumber.Cmp(revoked[i].Serial) != 0 || e.ReasonCode != wantReason[i] ||
							!e.RevocationTime.Equal(revokedAt.Truncate(time.Second)) {
							t.Errorf("entry %d: serial %X reason %d at %s", i, e.SerialNumber, e.ReasonCode, e.RevocationTime)
						}
					}

					crlFile := writeFile(t, "crl.der", der)
					caFile := writeFile(t, "ca.pem", EncodeCertificatesPEM(level.bundle))
					out := opensslOK(t, "crl", "-in", crlFile, "-inform", "DER", "-CAfile", caFile, "-verify", "-noout", "-text")
					containsAll(t, out, "verify OK", "X509v3 CRL Number: \n                42",
						"Key Compromise", "Superseded", "Certificate Hold")

					// The same check must fail against a CA that did not
					// sign it, or it proves nothing.
					otherFile := writeFile(t, "other.pem", EncodeCertificatePEM(lab.root))
					if level.name == "root" {
						otherFile = writeFile(t, "other.pem", EncodeCertificatePEM(lab.interm))
					}
					if out, err := opensslResult(t, "crl", "-in", crlFile, "-inform", "DER", "-CAfile", otherFile, "-verify", "-noout"); err == nil {
						t.Errorf("openssl verified the CRL against the wrong CA:\n%s", out)
					}
				})
			}
		})
	}
}

func TestCreateCRLRefused(t *testing.T) {
	now := time.Now()
	lab := newLabCA(t, "p256", 50, now)
	week := now.Add(7 * 24 * time.Hour)
	ok := []Revoked{{Serial: big.NewInt(1), RevokedAt: now, Reason: 1}}
	if _, err := lab.intermIs.CreateCRL(big.NewInt(1), now, week, ok, now); err != nil {
		t.Fatalf("the request the refusals start from fails: %v", err)
	}

	noCRLSign := issue(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "No cRLSign CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(year),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
	}, lab.root, lab.rootIs.Signer, lab.intermIs.Signer.Public())

	policy := []struct {
		name       string
		is         *Issuer
		number     *big.Int
		this, next time.Time
		at         time.Time
	}{
		{"nextUpdate beyond the CA's notAfter", lab.intermIs, big.NewInt(1), now, lab.interm.NotAfter.Add(time.Second), now},
		{"thisUpdate after nextUpdate", lab.intermIs, big.NewInt(1), week, now, now},
		{"thisUpdate equal to nextUpdate", lab.intermIs, big.NewInt(1), now, now, now},
		{"CRL number zero", lab.intermIs, big.NewInt(0), now, week, now},
		{"CRL number negative", lab.intermIs, big.NewInt(-1), now, week, now},
		{"no CRL number", lab.intermIs, nil, now, week, now},
		{"CA without cRLSign", &Issuer{Cert: noCRLSign, Chain: []*x509.Certificate{lab.root}, Signer: lab.intermIs.Signer}, big.NewInt(1), now, week, now},
		{"CA expired", lab.intermIs, big.NewInt(1), now, week, lab.interm.NotAfter.Add(time.Second)},
	}
	for _, tt := range policy {
		t.Run(tt.name, func(t *testing.T) {
			der, err := tt.is.CreateCRL(tt.number, tt.this, tt.next, ok, tt.at)
			wantPolicy(t, der, err)
		})
	}

	profile := []struct {
		name    string
		revoked []Revoked
	}{
		{"entry without serial", []Revoked{{RevokedAt: now, Reason: 1}}},
		{"entry with serial 0", []Revoked{{Serial: big.NewInt(0), RevokedAt: now, Reason: 1}}},
		{"entry without time", []Revoked{{Serial: big.NewInt(1), Reason: 1}}},
		{"unassigned reason 7", []Revoked{{Serial: big.NewInt(1), RevokedAt: now, Reason: 7}}},
		{"reason beyond 10", []Revoked{{Serial: big.NewInt(1), RevokedAt: now, Reason: 11}}},
		{"reason below -1", []Revoked{{Serial: big.NewInt(1), RevokedAt: now, Reason: -2}}},
		{"remove_from_crl in a full CRL", []Revoked{{Serial: big.NewInt(1), RevokedAt: now, Reason: 8}}},
		{"serial twice", []Revoked{{Serial: big.NewInt(1), RevokedAt: now, Reason: 1}, {Serial: big.NewInt(1), RevokedAt: now, Reason: 4}}},
	}
	for _, tt := range profile {
		t.Run(tt.name, func(t *testing.T) {
			der, err := lab.intermIs.CreateCRL(big.NewInt(2), now, week, tt.revoked, now)
			wantProfile(t, der, err)
		})
	}
	t.Run("zero thisUpdate", func(t *testing.T) {
		der, err := lab.intermIs.CreateCRL(big.NewInt(2), time.Time{}, week, nil, now)
		wantProfile(t, der, err)
	})
}

// A CA certificate without keyUsage extension may sign CRLs (RFC 5280
// 4.2.1.3), although x509.CreateRevocationList wants the bit.
func TestCreateCRLWithoutKeyUsageExtension(t *testing.T) {
	now := time.Now()
	key := testKey(t, "p256", 53)
	root := selfSigned(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: "Root Without Key Usage"},
		NotBefore: now.Add(-time.Minute),
		NotAfter:  now.Add(year),
	}, key)
	if hasKeyUsage(root) {
		t.Fatal("test root has a keyUsage extension")
	}
	der, err := (&Issuer{Cert: root, Signer: key}).CreateCRL(big.NewInt(1), now, now.Add(time.Hour), nil, now)
	if err != nil {
		t.Fatalf("CreateCRL: %v", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(root); err != nil {
		t.Fatal(err)
	}
	if root.KeyUsage != 0 {
		t.Error("CreateCRL modified the Issuer's certificate")
	}
}
