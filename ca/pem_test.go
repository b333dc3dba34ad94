package ca

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseCertificatePEM(t *testing.T) {
	now := time.Now()
	root, key := labRoot(t, "p256", 0, now)
	other, _ := labRoot(t, "p384", 0, now)
	certPEM := EncodeCertificatePEM(root)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	pubPEM, err := EncodePublicKeyPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	req, err := CSR(labTemplate(t, "Lab CA", 0), key)
	if err != nil {
		t.Fatal(err)
	}
	// A PEM wrapper around bytes that are not a certificate.
	notDER := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})
	withHeader := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: root.Raw})
	// A block whose END line is missing: pem.Decode would skip it and
	// return the next block.
	truncated := append([]byte(strings.Split(string(certPEM), "-----END")[0]), EncodeCertificatePEM(other)...)

	bad := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"whitespace", []byte(" \n\t\n")},
		{"garbage", []byte("this is not a certificate")},
		{"DER", root.Raw},
		{"private key", keyPEM},
		{"public key", pubPEM},
		{"CSR", EncodeCSRPEM(req)},
		{"not DER inside", notDER},
		{"PEM headers", withHeader},
		{"two certificates", EncodeCertificatesPEM([]*x509.Certificate{root, other})},
		{"trailing private key", append(bytes.Clone(certPEM), keyPEM...)},
		{"leading private key", append(bytes.Clone(keyPEM), certPEM...)},
		{"trailing text", append(bytes.Clone(certPEM), "junk\n"...)},
		{"leading text", append([]byte("subject=CN=x\n"), certPEM...)},
		{"truncated block before a good one", truncated},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseCertificatePEM(tc.data)
			if !errors.Is(err, ErrBadPEM) {
				t.Errorf("ParseCertificatePEM: got %v, %v; want ErrBadPEM", c, err)
			}
		})
	}

	padded := append(append([]byte("\n  \r\n"), certPEM...), "\n\n\t"...)
	c, err := ParseCertificatePEM(padded)
	if err != nil {
		t.Fatalf("surrounding whitespace: %v", err)
	}
	if !c.Equal(root) {
		t.Error("round trip changed the certificate")
	}
}

func TestParseCertificatesPEM(t *testing.T) {
	now := time.Now()
	a, key := labRoot(t, "p256", 0, now)
	b, _ := labRoot(t, "p384", 0, now)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})

	data := EncodeCertificatesPEM([]*x509.Certificate{a, b})
	got, err := ParseCertificatesPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Equal(a) || !got[1].Equal(b) {
		t.Fatalf("got %d certificates, want a and b in order", len(got))
	}
	// Blank lines between blocks are common in hand-assembled bundles.
	spaced := bytes.Join([][]byte{EncodeCertificatePEM(a), EncodeCertificatePEM(b)}, []byte("\n\n"))
	if got, err := ParseCertificatesPEM(spaced); err != nil || len(got) != 2 {
		t.Errorf("blank line between blocks: %d certificates, %v", len(got), err)
	}

	for name, data := range map[string][]byte{
		"empty":                nil,
		"garbage":              []byte("garbage"),
		"key between certs":    bytes.Join([][]byte{EncodeCertificatePEM(a), keyPEM, EncodeCertificatePEM(b)}, nil),
		"text between certs":   bytes.Join([][]byte{EncodeCertificatePEM(a), []byte("junk\n"), EncodeCertificatePEM(b)}, nil),
		"only a private key":   keyPEM,
		"trailing text":        append(EncodeCertificatePEM(a), "junk"...),
		"undecodable cert":     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x00}}),
		"empty EncodeCertsPEM": EncodeCertificatesPEM(nil),
	} {
		t.Run(name, func(t *testing.T) {
			if got, err := ParseCertificatesPEM(data); !errors.Is(err, ErrBadPEM) {
				t.Errorf("got %d certificates, %v; want ErrBadPEM", len(got), err)
			}
		})
	}
}

func TestParseCSRPEM(t *testing.T) {
	key := testKey(t, "p256", 0)
	req, err := CSR(labTemplate(t, "Lab CA", 0), key)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"} {
		data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: req.Raw})
		got, err := ParseCSRPEM(data)
		if err != nil {
			t.Errorf("%s: %v", typ, err)
			continue
		}
		if !bytes.Equal(got.Raw, req.Raw) {
			t.Errorf("%s: round trip changed the CSR", typ)
		}
	}
	root, _ := labRoot(t, "p256", 0, time.Now())
	for name, data := range map[string][]byte{
		"empty":       nil,
		"certificate": EncodeCertificatePEM(root),
		"two CSRs":    append(EncodeCSRPEM(req), EncodeCSRPEM(req)...),
		"not DER":     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("x")}),
	} {
		if got, err := ParseCSRPEM(data); !errors.Is(err, ErrBadPEM) {
			t.Errorf("%s: got %v, %v; want ErrBadPEM", name, got, err)
		}
	}
}

func TestEncodePEMIsReadByOpenSSL(t *testing.T) {
	key := testKey(t, "p256", 0)
	req, err := CSR(labTemplate(t, "IoT HSM Lab Issuing CA", 0), key)
	if err != nil {
		t.Fatal(err)
	}
	// Exits non-zero if the file cannot be read or the signature is bad.
	openssl(t, "req", "-in", writeFile(t, "req.pem", EncodeCSRPEM(req)), "-verify", "-noout")
}
