package ca

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"
)

func TestSignCMS(t *testing.T) {
	for _, kind := range []string{"p256", "rsa2048", "p384"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			now := time.Now()
			lab := newLabCA(t, kind, 60, now)
			data := []byte("firmware image 1.2.3\x00\x01\x02 with binary bytes\r\n")
			rootFile := writeFile(t, "root.pem", EncodeCertificatePEM(lab.root))
			dataFile := writeFile(t, "data.bin", data)

			wantDigest := pkcs7.OIDDigestAlgorithmSHA256
			if kind == "p384" {
				wantDigest = pkcs7.OIDDigestAlgorithmSHA384
			}

			for _, level := range []struct {
				name  string
				is    *Issuer
				certs int
			}{
				{"root", lab.rootIs, 1},
				{"intermediate", lab.intermIs, 2},
			} {
				t.Run(level.name, func(t *testing.T) {
					attached, err := level.is.SignCMS(data, false, now)
					if err != nil {
						t.Fatalf("SignCMS attached: %v", err)
					}
					detached, err := level.is.SignCMS(data, true, now)
					if err != nil {
						t.Fatalf("SignCMS detached: %v", err)
					}

					for name, der := range map[string][]byte{"attached": attached, "detached": detached} {
						p7, err := pkcs7.Parse(der)
						if err != nil {
							t.Fatal(err)
						}
						if len(p7.Certificates) != level.certs || !p7.Certificates[0].Equal(level.is.Cert) {
							t.Errorf("%s: %d certificates, want the CA certificate and its chain (%d)", name, len(p7.Certificates), level.certs)
						}
						if len(p7.Signers) != 1 || !p7.Signers[0].DigestAlgorithm.Algorithm.Equal(wantDigest) {
							t.Errorf("%s: digest algorithm %v, want %v", name, p7.Signers[0].DigestAlgorithm.Algorithm, wantDigest)
						}
						if name == "detached" && len(p7.Content) != 0 {
							t.Errorf("detached CMS carries %d content bytes", len(p7.Content))
						}
						var signingTime time.Time
						if err := p7.UnmarshalSignedAttribute(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 5}, &signingTime); err != nil {
							t.Errorf("%s: no signingTime: %v", name, err)
						}
					}

					// -purpose any: the signer is a CA certificate, not an
					// S/MIME one.
					attFile := writeFile(t, "attached.der", attached)
					outFile := filepath.Join(t.TempDir(), "out.bin")
					out := opensslOK(t, "cms", "-verify", "-binary", "-purpose", "any", "-CAfile", rootFile,
						"-in", attFile, "-inform", "DER", "-out", outFile)
					containsAll(t, out, "Verification successful")
					if got, err := os.ReadFile(outFile); err != nil || !bytes.Equal(got, data) {
						t.Errorf("openssl extracted %q, want the signed data (err %v)", got, err)
					}
					dump := opensslOK(t, "cms", "-cmsout", "-print", "-in", attFile, "-inform", "DER")
					containsAll(t, dump, "contentType", "messageDigest", "signingTime")

					detFile := writeFile(t, "detached.der", detached)
					out = opensslOK(t, "cms", "-verify", "-binary", "-purpose", "any", "-CAfile", rootFile,
						"-in", detFile, "-inform", "DER", "-content", dataFile, "-out", os.DevNull)
					containsAll(t, out, "Verification successful")

					tampered := append([]byte(nil), data...)
					tampered[0] ^= 0x20
					tamperedFile := writeFile(t, "tampered.bin", tampered)
					if out, err := opensslResult(t, "cms", "-verify", "-binary", "-purpose", "any", "-CAfile", rootFile,
						"-in", detFile, "-inform", "DER", "-content", tamperedFile, "-out", os.DevNull); err == nil {
						t.Errorf("openssl verified a detached signature over other content:\n%s", out)
					}

					i := bytes.Index(attached, data)
					if i < 0 {
						t.Fatal("attached CMS does not contain the data")
					}
					bad := append([]byte(nil), attached...)
					bad[i] ^= 0x20
					badFile := writeFile(t, "bad.der", bad)
					if out, err := opensslResult(t, "cms", "-verify", "-binary", "-purpose", "any", "-CAfile", rootFile,
						"-in", badFile, "-inform", "DER", "-out", os.DevNull); err == nil {
						t.Errorf("openssl verified tampered attached content:\n%s", out)
					}

					// A trust anchor that did not issue the CA must not do.
					other := newLabCA(t, kind, 64, now)
					otherFile := writeFile(t, "other.pem", EncodeCertificatePEM(other.root))
					if out, err := opensslResult(t, "cms", "-verify", "-binary", "-purpose", "any", "-CAfile", otherFile,
						"-in", attFile, "-inform", "DER", "-out", os.DevNull); err == nil {
						t.Errorf("openssl verified against an unrelated root:\n%s", out)
					}
				})
			}
		})
	}
}

func TestSignCMSRefused(t *testing.T) {
	now := time.Now()
	lab := newLabCA(t, "p256", 60, now)
	der, err := lab.intermIs.SignCMS([]byte("x"), false, lab.interm.NotAfter.Add(time.Second))
	wantPolicy(t, der, err)
	der, err = (&Issuer{Cert: lab.interm, Chain: []*x509.Certificate{lab.root}, Signer: lab.rootIs.Signer}).SignCMS([]byte("x"), false, now)
	wantPolicy(t, der, err)
}
