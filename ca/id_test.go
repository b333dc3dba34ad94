package ca

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"regexp"
	"testing"
)

// ID must be what an operator gets from an exported public key with
//
//	openssl pkey -pubin -in pub.pem -outform DER | sha256sum
//
// so the test runs exactly that pipeline (hashing openssl's DER in Go) as
// well as the same computation on Go's PKIX encoding.
func TestIDMatchesOpenSSL(t *testing.T) {
	for _, kind := range []string{"rsa2048", "p256", "p384"} {
		t.Run(kind, func(t *testing.T) {
			pub := testKey(t, kind, 0).Public()
			id, err := ID(pub)
			if err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(id) {
				t.Fatalf("ID %q is not lowercase hex SHA-256", id)
			}

			pubPEM, err := EncodePublicKeyPEM(pub)
			if err != nil {
				t.Fatal(err)
			}
			der := openssl(t, "pkey", "-pubin", "-in", writeFile(t, "pub.pem", pubPEM), "-outform", "DER")
			fromOpenSSL := sha256.Sum256(der)
			if want := hex.EncodeToString(fromOpenSSL[:]); id != want {
				t.Errorf("ID %s, openssl pipeline gives %s", id, want)
			}

			spki, err := x509.MarshalPKIXPublicKey(pub)
			if err != nil {
				t.Fatal(err)
			}
			fromGo := sha256.Sum256(spki)
			if want := hex.EncodeToString(fromGo[:]); id != want {
				t.Errorf("ID %s, SHA-256 of Go's SPKI gives %s", id, want)
			}
		})
	}
	a, _ := ID(testKey(t, "p256", 0).Public())
	b, _ := ID(testKey(t, "p256", 1).Public())
	if a == b {
		t.Error("two keys have the same ID")
	}
}

// The subjectPublicKey BIT STRING holds the PKCS #1 RSAPublicKey for RSA and
// the uncompressed point for EC (RFC 3279, RFC 5480); hashing those directly
// is an independent route to the RFC 5280 method (1) identifier.
func TestSubjectKeyID(t *testing.T) {
	for _, kind := range []string{"rsa2048", "p256", "p384"} {
		t.Run(kind, func(t *testing.T) {
			pub := testKey(t, kind, 0).Public()
			var bitString []byte
			switch k := pub.(type) {
			case *rsa.PublicKey:
				bitString = x509.MarshalPKCS1PublicKey(k)
			case *ecdsa.PublicKey:
				ecdh, err := k.ECDH()
				if err != nil {
					t.Fatal(err)
				}
				bitString = ecdh.Bytes()
			}
			want := sha1.Sum(bitString)
			got, err := SubjectKeyID(pub)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != hex.EncodeToString(want[:]) {
				t.Errorf("SubjectKeyID %x, want %x", got, want)
			}
		})
	}
	if _, err := SubjectKeyID("not a key"); err == nil {
		t.Error("SubjectKeyID accepted a string")
	}
	if _, err := ID(nil); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("ID(nil): %v, want ErrUnsupportedKey", err)
	}
}
