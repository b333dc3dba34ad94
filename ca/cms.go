package ca

import (
	"crypto"
	"fmt"
	"time"

	"github.com/smallstep/pkcs7"
)

// SignCMS returns the DER of a CMS SignedData (RFC 5652) over data, signed by
// the CA key with signed attributes contentType, messageDigest and
// signingTime, and carrying the CA certificate and its chain. With detached
// the content is left out and the receiver supplies it.
//
// The digest follows the CA key's signature algorithm: SHA-256, SHA-384 for
// P-384, so the signature is never weaker than the key.
//
// github.com/smallstep/pkcs7 does the encoding; it takes any crypto.Signer.
// It sets signingTime from the wall clock rather than from now, which is
// why now only serves the Usable check.
func (is *Issuer) SignCMS(data []byte, detached bool, now time.Time) ([]byte, error) {
	if err := is.Usable(now); err != nil {
		return nil, err
	}
	_, _, hash, err := is.algorithm()
	if err != nil {
		return nil, err
	}
	digest := pkcs7.OIDDigestAlgorithmSHA256
	if hash == crypto.SHA384 {
		digest = pkcs7.OIDDigestAlgorithmSHA384
	}
	sd, err := pkcs7.NewSignedData(data)
	if err != nil {
		return nil, fmt.Errorf("ca: CMS: %w", err)
	}
	// Per SignedData, not the package-wide default, which other code in
	// the process might change.
	sd.SetDigestAlgorithm(digest)
	if chain := is.chain(); len(chain) == 0 {
		err = sd.AddSigner(is.Cert, is.Signer, pkcs7.SignerInfoConfig{})
	} else {
		// Also checks that Chain really is the issuing chain of Cert.
		err = sd.AddSignerChain(is.Cert, is.Signer, chain, pkcs7.SignerInfoConfig{})
	}
	if err != nil {
		return nil, fmt.Errorf("ca: CMS sign: %w", err)
	}
	if detached {
		sd.Detach()
	}
	der, err := sd.Finish()
	if err != nil {
		return nil, fmt.Errorf("ca: CMS encode: %w", err)
	}

	// Check our own output like a receiver would (signature over the
	// signed attributes, message digest, signing time inside the CA's
	// validity), so a token fault never leaves the appliance as a
	// signature that fails somewhere else.
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse signed CMS: %w", err)
	}
	if detached {
		p7.Content = data
	}
	if err := p7.Verify(); err != nil {
		return nil, fmt.Errorf("ca: the signed CMS does not verify: %w", err)
	}
	return der, nil
}
