package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"math/big"
	"testing"
)

func TestSignatureAlgorithm(t *testing.T) {
	for _, kind := range keyKinds {
		got, err := SignatureAlgorithm(testKey(t, kind, 0).Public())
		if err != nil || got != wantSigAlg[kind] {
			t.Errorf("%s: %v, %v; want %v", kind, got, err, wantSigAlg[kind])
		}
	}

	// Only the modulus size matters, so a fake modulus of the right length
	// avoids generating weak keys.
	rsaOfBits := func(bits int) *rsa.PublicKey {
		n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
		return &rsa.PublicKey{N: n.Add(n, big.NewInt(1)), E: 65537}
	}
	edPub := ed25519.PublicKey(make([]byte, ed25519.PublicKeySize))
	for name, pub := range map[string]crypto.PublicKey{
		"rsa1024":           rsaOfBits(1024),
		"rsa2047":           rsaOfBits(2047),
		"rsa8192":           rsaOfBits(8192),
		"p224":              testKey(t, "p224", 0).Public(),
		"p521":              testKey(t, "p521", 0).Public(),
		"ed25519":           edPub,
		"ecdsa value":       *testKey(t, "p256", 0).Public().(*ecdsa.PublicKey),
		"nil":               nil,
		"nil rsa pointer":   (*rsa.PublicKey)(nil),
		"nil ecdsa pointer": (*ecdsa.PublicKey)(nil),
	} {
		if got, err := SignatureAlgorithm(pub); !errors.Is(err, ErrUnsupportedKey) || got != x509.UnknownSignatureAlgorithm {
			t.Errorf("%s: %v, %v; want ErrUnsupportedKey", name, got, err)
		}
	}
}
