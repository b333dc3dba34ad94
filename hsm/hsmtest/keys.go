package hsmtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"io"

	"github.com/iot-hsm/iot-hsm/hsm"
)

func generate(kt hsm.KeyType) (crypto.Signer, error) {
	switch kt {
	case hsm.P256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case hsm.P384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case hsm.RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case hsm.RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case hsm.RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("%w: key type %q", hsm.ErrUnsupported, kt)
}

// clone copies key through its PKCS#8 encoding, so the token's copy shares no memory
// with the caller's.
func clone(key crypto.Signer) (crypto.Signer, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %T", hsm.ErrUnsupported, key)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	return k.(crypto.Signer), nil
}

// signer signs with a slot's key, checking the token at each call: a pulled token,
// a lost login, a deleted or replaced key and an injected fault all fail the Sign.
type signer struct {
	t    *Token
	name string
	pub  crypto.PublicKey
}

func (s *signer) Public() crypto.PublicKey { return s.pub }

func (s *signer) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.t.mu.Lock()
	sl, err := s.t.lookup(OpSign, s.name, true)
	s.t.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if !publicEqual(sl.key.Public(), s.pub) {
		return nil, fmt.Errorf("%w: the key in %s/%s was replaced", hsm.ErrNotFound, s.t.info.ID, s.name)
	}
	return sl.key.Sign(r, digest, opts)
}

func publicEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
