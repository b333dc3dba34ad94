package ca

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"
)

// pkiTBS builds a TBSCertificate the way a PKI would: x509.CreateCertificate
// with the CA certificate as parent, signed by a throwaway key of the same
// type (so the algorithm is right) whose signature is thrown away. parent's
// key is swapped for the throwaway's only because CreateCertificate insists
// they match; issuer name and AKI still come from the CA certificate.
func pkiTBS(t *testing.T, ca *x509.Certificate, throwaway crypto.Signer, tmpl *x509.Certificate, pub crypto.PublicKey) []byte {
	t.Helper()
	parent := *ca
	parent.PublicKey = throwaway.Public()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(0x7e57)
	}
	if tmpl.SignatureAlgorithm == x509.UnknownSignatureAlgorithm {
		alg, err := SignatureAlgorithm(throwaway.Public())
		if err != nil {
			t.Fatal(err)
		}
		tmpl.SignatureAlgorithm = alg
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, &parent, pub, throwaway)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c.RawTBSCertificate
}

func TestSignTBS(t *testing.T) {
	for _, kind := range []string{"p256", "rsa2048"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			now := time.Now()
			lab := newLabCA(t, kind, 40, now)
			throwaway := testKey(t, kind, 42)
			leafKey := testKey(t, "p256", 43)
			ski, _ := SubjectKeyID(leafKey.Public())
			leafTmpl := func() *x509.Certificate {
				return &x509.Certificate{
					Subject:               pkix.Name{CommonName: "tbs.iot.example.com"},
					DNSNames:              []string{"tbs.iot.example.com"},
					NotBefore:             now.Truncate(time.Second),
					NotAfter:              now.Add(30 * 24 * time.Hour),
					BasicConstraintsValid: true,
					KeyUsage:              x509.KeyUsageDigitalSignature,
					ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
					SubjectKeyId:          ski,
				}
			}

			tbs := pkiTBS(t, lab.interm, throwaway, leafTmpl(), leafKey.Public())
			cert, err := lab.intermIs.SignTBS(tbs, now)
			if err != nil {
				t.Fatalf("SignTBS: %v", err)
			}
			if !bytes.Equal(cert.RawTBSCertificate, tbs) {
				t.Error("the signed certificate does not carry the TBS unchanged")
			}
			if cert.SignatureAlgorithm != wantSigAlg[kind] {
				t.Errorf("signature algorithm %v", cert.SignatureAlgorithm)
			}
			rootFile := writeFile(t, "root.pem", EncodeCertificatePEM(lab.root))
			intermFile := writeFile(t, "interm.pem", EncodeCertificatePEM(lab.interm))
			certFile := writeFile(t, "cert.pem", EncodeCertificatePEM(cert))
			out := openssl(t, "verify", "-x509_strict", "-CAfile", rootFile, "-untrusted", intermFile, certFile)
			if want := certFile + ": OK\n"; string(out) != want {
				t.Fatalf("openssl verify printed %q, want %q", out, want)
			}

			// A TBS for the root, as a PKI would send it for a new
			// intermediate: path length below the root's.
			sub := &x509.Certificate{
				Subject:               pkix.Name{CommonName: "TBS Issuing CA"},
				NotBefore:             now.Truncate(time.Second),
				NotAfter:              now.Add(year),
				BasicConstraintsValid: true,
				IsCA:                  true,
				MaxPathLen:            0,
				MaxPathLenZero:        true,
				KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
				SubjectKeyId:          ski,
			}
			subCert, err := lab.rootIs.SignTBS(pkiTBS(t, lab.root, throwaway, sub, leafKey.Public()), now)
			if err != nil {
				t.Fatalf("SignTBS of a CA certificate: %v", err)
			}
			opensslVerify(t, lab.root, subCert)

			other := newLabCA(t, kind, 44, now)
			otherAlg := x509.ECDSAWithSHA384
			if kind == "rsa2048" {
				otherAlg = x509.SHA384WithRSA
			}
			// Go takes the AKI from the parent's SKI, so a parent copy with
			// another SKI yields a TBS with a foreign AKI.
			wrongSKI := *lab.interm
			wrongSKI.SubjectKeyId = bytes.Repeat([]byte{0xAB}, 20)

			denied := []struct {
				name string
				is   *Issuer
				tbs  func() []byte
			}{
				{"another issuer name", lab.intermIs, func() []byte {
					return pkiTBS(t, lab.root, throwaway, leafTmpl(), leafKey.Public())
				}},
				// Same subject as our intermediate, other key: only the AKI
				// tells them apart.
				{"same issuer name, another CA's key identifier", lab.intermIs, func() []byte {
					return pkiTBS(t, other.interm, throwaway, leafTmpl(), leafKey.Public())
				}},
				{"validity beyond the CA's", lab.intermIs, func() []byte {
					tmpl := leafTmpl()
					tmpl.NotAfter = lab.interm.NotAfter.Add(time.Hour)
					return pkiTBS(t, lab.interm, throwaway, tmpl, leafKey.Public())
				}},
				{"signature algorithm not the CA key's", lab.intermIs, func() []byte {
					tmpl := leafTmpl()
					tmpl.SignatureAlgorithm = otherAlg
					return pkiTBS(t, lab.interm, throwaway, tmpl, leafKey.Public())
				}},
				{"foreign authority key identifier", lab.intermIs, func() []byte {
					return pkiTBS(t, &wrongSKI, throwaway, leafTmpl(), leafKey.Public())
				}},
				{"CA under path length 0", lab.intermIs, func() []byte {
					return pkiTBS(t, lab.interm, throwaway, sub, leafKey.Public())
				}},
				{"CA without path length under path length 1", lab.rootIs, func() []byte {
					tmpl := *sub
					tmpl.MaxPathLen, tmpl.MaxPathLenZero = -1, false
					return pkiTBS(t, lab.root, throwaway, &tmpl, leafKey.Public())
				}},
				{"DNS name outside the permitted subtree", lab.rootIs, func() []byte {
					tmpl := leafTmpl()
					tmpl.DNSNames = []string{"tbs.example.org"}
					return pkiTBS(t, lab.root, throwaway, tmpl, leafKey.Public())
				}},
				{"unknown critical extension", lab.intermIs, func() []byte {
					tmpl := leafTmpl()
					tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 999, 7}, Critical: true, Value: []byte{0x05, 0x00}}}
					return pkiTBS(t, lab.interm, throwaway, tmpl, leafKey.Public())
				}},
				{"CA expired", &Issuer{Cert: lab.interm, Chain: lab.intermIs.Chain, Signer: lab.intermIs.Signer}, func() []byte {
					return tbs
				}},
			}
			for _, tt := range denied {
				t.Run(tt.name, func(t *testing.T) {
					at := now
					if tt.name == "CA expired" {
						at = lab.interm.NotAfter.Add(time.Second)
					}
					cert, err := tt.is.SignTBS(tt.tbs(), at)
					wantPolicy(t, cert, err)
				})
			}

			malformed := map[string][]byte{
				"empty":            nil,
				"garbage":          []byte("not DER"),
				"trailing data":    append(append([]byte(nil), tbs...), 0x00),
				"a whole cert":     cert.Raw,
				"truncated":        tbs[:len(tbs)-1],
				"sequence of junk": {0x30, 0x03, 0x02, 0x01, 0x01},
			}
			for name, der := range malformed {
				t.Run("malformed "+name, func(t *testing.T) {
					cert, err := lab.intermIs.SignTBS(der, now)
					wantProfile(t, cert, err)
				})
			}
		})
	}
}
