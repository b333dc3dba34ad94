package pkcs11

import (
	"context"
	"crypto"
	"crypto/rsa"
	"encoding/asn1"
	"fmt"
	"io"
	"math/big"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// signTimeout bounds a signature made through the plain crypto.Signer interface, which
// carries no context.
const signTimeout = 30 * time.Second

// Signer implements hsm.Token.
func (t *Token) Signer(ctx context.Context, slot string) (crypto.Signer, error) {
	_, name, err := ParseSlot(slot)
	if err != nil {
		return nil, err
	}
	pub, err := t.PublicKey(ctx, name)
	if err != nil {
		return nil, err
	}
	kt, err := hsm.KeyTypeOf(pub)
	if err != nil {
		return nil, err
	}
	return &signer{t: t, slot: name, pub: pub, kt: kt}, nil
}

type signer struct {
	t    *Token
	slot string
	pub  crypto.PublicKey
	kt   hsm.KeyType
}

func (s *signer) Public() crypto.PublicKey { return s.pub }

// Sign signs a digest inside the token. ECDSA signatures come back from PKCS#11 as
// raw r||s and are returned ASN.1-encoded, as crypto.Signer promises; RSA PKCS#1 v1.5
// needs the DigestInfo prefix added here because CKM_RSA_PKCS signs what it is given.
func (s *signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h := opts.HashFunc()
	if h != 0 && len(digest) != h.Size() {
		return nil, fmt.Errorf("pkcs11: digest is %d bytes, %v needs %d", len(digest), h, h.Size())
	}
	var mech *pkcs11.Mechanism
	input := digest
	switch {
	case !s.kt.IsRSA():
		mech = pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)
	default:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			params, err := pssParams(h, pss.SaltLength)
			if err != nil {
				return nil, err
			}
			mech = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, params)
		} else {
			prefix, ok := digestInfoPrefix[h]
			if !ok {
				return nil, fmt.Errorf("%w: RSA PKCS#1 v1.5 with %v", hsm.ErrUnsupported, h)
			}
			mech = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)
			input = append(append(make([]byte, 0, len(prefix)+len(digest)), prefix...), digest...)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), signTimeout)
	defer cancel()
	var sig []byte
	err := s.t.do(ctx, func(sh pkcs11.SessionHandle) error {
		key, err := s.t.privateKey(sh, s.slot)
		if err != nil {
			return err
		}
		if err := s.t.m.ctx.SignInit(sh, []*pkcs11.Mechanism{mech}, key); err != nil {
			return err
		}
		sig, err = s.t.m.ctx.Sign(sh, input)
		return err
	})
	if err != nil {
		return nil, err
	}
	if s.kt.IsRSA() {
		return sig, nil
	}
	return ecdsaASN1(sig)
}

func ecdsaASN1(raw []byte) ([]byte, error) {
	if len(raw) == 0 || len(raw)%2 != 0 {
		return nil, fmt.Errorf("pkcs11: ECDSA signature of odd length %d", len(raw))
	}
	n := len(raw) / 2
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:]),
	})
}

// DigestInfo prefixes (RFC 8017 section 9.2, note 1) for the hashes a CA signs with.
var digestInfoPrefix = map[crypto.Hash][]byte{
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
}

func pssParams(h crypto.Hash, saltLength int) ([]byte, error) {
	var hashMech, mgf uint
	switch h {
	case crypto.SHA256:
		hashMech, mgf = pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256
	case crypto.SHA384:
		hashMech, mgf = pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384
	case crypto.SHA512:
		hashMech, mgf = pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512
	default:
		return nil, fmt.Errorf("%w: RSA-PSS with %v", hsm.ErrUnsupported, h)
	}
	// Auto and EqualsHash both become the hash length: it is what X.509 and CMS
	// profiles expect, and every verifier accepts it.
	salt := saltLength
	if salt == rsa.PSSSaltLengthAuto || salt == rsa.PSSSaltLengthEqualsHash {
		salt = h.Size()
	}
	if salt < 0 {
		return nil, fmt.Errorf("pkcs11: invalid PSS salt length %d", saltLength)
	}
	return pkcs11.NewPSSParams(hashMech, mgf, uint(salt)), nil
}
