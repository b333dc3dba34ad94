package pemkey

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"sync"
	"testing"
)

// fuzzSeedKeys are made once per test binary: deterministic EC and Ed25519
// keys, one RSA 2048 key, in the encodings operators bring. Encrypted PKCS#8
// seeds (PBKDF2 and scrypt, written by openssl) are in testdata/fuzz/FuzzParse.
var fuzzSeedKeys = sync.OnceValue(func() [][]byte {
	var out [][]byte
	add := func(typ string, der []byte, err error) {
		if err == nil {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
		}
	}
	p256, _ := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{7}, 32))
	p384, _ := ecdsa.ParseRawPrivateKey(elliptic.P384(), bytes.Repeat([]byte{9}, 48))
	for _, k := range []*ecdsa.PrivateKey{p256, p384} {
		der, err := x509.MarshalECPrivateKey(k)
		add("EC PRIVATE KEY", der, err)
		der, err = x509.MarshalPKCS8PrivateKey(k)
		add("PRIVATE KEY", der, err)
	}
	if r, err := rsa.GenerateKey(rand.Reader, 2048); err == nil {
		add("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(r), nil)
		der, err := x509.MarshalPKCS8PrivateKey(r)
		add("PRIVATE KEY", der, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32)))
	add("PRIVATE KEY", der, err)
	if der, err := x509.MarshalECPrivateKey(p256); err == nil {
		//lint:ignore SA1019 legacy OpenSSL encryption is what Parse must still read.
		b, err := x509.EncryptPEMBlock(rand.Reader, "EC PRIVATE KEY", der, []byte(testPassword), x509.PEMCipherAES128) //nolint:staticcheck
		if err == nil {
			out = append(out, pem.EncodeToMemory(b))
		}
	}
	return out
})

// FuzzParse: Parse never panics, returns a key or an error and never both,
// every error unwraps to one of the sentinels, and every key is one the
// appliance takes (RSA 2048/3072/4096 with two primes, ECDSA P-256/P-384) and
// actually signs for its public key.
func FuzzParse(f *testing.F) {
	for _, k := range fuzzSeedKeys() {
		f.Add(k, []byte(testPassword))
		f.Add(k, []byte(nil))
	}
	f.Add([]byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n"), []byte(testPassword))
	f.Add([]byte("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"), []byte(nil))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"), []byte(nil))
	f.Add([]byte(""), []byte(""))
	f.Fuzz(func(t *testing.T, data, password []byte) {
		key, err := Parse(data, password)
		if err != nil {
			if key != nil {
				t.Fatalf("Parse returned a %T key along with error %v", key, err)
			}
			known := false
			for _, s := range sentinels {
				known = known || errors.Is(err, s)
			}
			if !known {
				t.Fatalf("error %v unwraps to no sentinel", err)
			}
			return
		}
		if key == nil {
			t.Fatal("Parse returned neither key nor error")
		}
		switch k := key.(type) {
		case *rsa.PrivateKey:
			if b := k.N.BitLen(); b != 2048 && b != 3072 && b != 4096 || len(k.Primes) != 2 {
				t.Fatalf("accepted RSA key of %d bits, %d primes", k.N.BitLen(), len(k.Primes))
			}
		case *ecdsa.PrivateKey:
			if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
				t.Fatalf("accepted EC key on %s", k.Curve.Params().Name)
			}
		default:
			t.Fatalf("accepted a %T key", key)
		}
		digest := sha256.Sum256(data)
		sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("accepted key cannot sign: %v", err)
		}
		switch pub := key.Public().(type) {
		case *rsa.PublicKey:
			err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig)
		case *ecdsa.PublicKey:
			if !ecdsa.VerifyASN1(pub, digest[:], sig) {
				err = errors.New("ECDSA signature does not verify")
			}
		}
		if err != nil {
			t.Fatalf("accepted key's signature does not verify under its public key: %v", err)
		}
		Wipe(key)
	})
}
