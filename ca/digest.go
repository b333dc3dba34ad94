package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"time"
)

// SignDigest signs a digest computed elsewhere: PKCS#1 v1.5, or PSS with a
// salt as long as the hash, for RSA; ASN.1 DER ECDSA for EC keys. Only
// Usable is checked, since the content is opaque; whether raw digests are
// allowed at all is the device configuration's decision.
//
// hash must be SHA-256, SHA-384 or SHA-512 and digest exactly its length,
// else ErrProfile; PSS with an EC key is ErrProfile too. SHA-1 is refused
// because a CA key signing a collision-prone digest is how certificates get
// forged.
func (is *Issuer) SignDigest(digest []byte, hash crypto.Hash, pss bool, now time.Time) ([]byte, error) {
	sig, check, err := is.SignDigestThenCheck(digest, hash, pss, now)
	if err != nil {
		return nil, err
	}
	if err := check(); err != nil {
		return nil, err
	}
	return sig, nil
}

// SignDigestThenCheck is SignDigest with the verification of the signature left
// to the caller: check must pass before the signature is handed out. The device
// runs it off the token's worker, so that the token signs the next request
// meanwhile.
func (is *Issuer) SignDigestThenCheck(digest []byte, hash crypto.Hash, pss bool, now time.Time) (sig []byte, check func() error, err error) {
	if err := is.Usable(now); err != nil {
		return nil, nil, err
	}
	switch hash {
	case crypto.SHA256, crypto.SHA384, crypto.SHA512:
	default:
		return nil, nil, fmt.Errorf("%w: hash %v is not allowed for raw digests (SHA-256, SHA-384, SHA-512 are)", ErrProfile, hash)
	}
	if len(digest) != hash.Size() {
		return nil, nil, fmt.Errorf("%w: digest of %d octets for %v, which has %d", ErrProfile, len(digest), hash, hash.Size())
	}

	var opts crypto.SignerOpts = hash
	var verify func(sig []byte) error
	switch pub := is.Cert.PublicKey.(type) {
	case *rsa.PublicKey:
		if pss {
			pssOpts := &rsa.PSSOptions{SaltLength: hash.Size(), Hash: hash}
			opts = pssOpts
			verify = func(sig []byte) error { return rsa.VerifyPSS(pub, hash, digest, sig, pssOpts) }
		} else {
			verify = func(sig []byte) error { return rsa.VerifyPKCS1v15(pub, hash, digest, sig) }
		}
	case *ecdsa.PublicKey:
		if pss {
			return nil, nil, fmt.Errorf("%w: PSS is an RSA padding, the CA key is ECDSA", ErrProfile)
		}
		verify = func(sig []byte) error {
			if !ecdsa.VerifyASN1(pub, digest, sig) {
				return fmt.Errorf("ECDSA verification failed")
			}
			return nil
		}
	default:
		return nil, nil, fmt.Errorf("%w: CA key type %T", ErrUnsupportedKey, is.Cert.PublicKey)
	}

	sig, err = is.Signer.Sign(rand.Reader, digest, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: sign digest: %w", err)
	}
	// Tokens differ in how they take PSS parameters; a signature with the
	// wrong salt length or padding must not be handed out as good.
	check = func() error {
		if err := verify(sig); err != nil {
			return fmt.Errorf("ca: the slot key produced a signature that does not verify: %w", err)
		}
		return nil
	}
	return sig, check, nil
}
