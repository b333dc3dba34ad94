package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
)

// SignatureAlgorithm returns the signature algorithm the appliance uses for
// a slot key. Only the key types the HSM profile allows are accepted, so an
// unexpected key fails here rather than producing an odd certificate.
func SignatureAlgorithm(pub crypto.PublicKey) (x509.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return x509.UnknownSignatureAlgorithm, fmt.Errorf("%w: empty RSA key", ErrUnsupportedKey)
		}
		switch bits := k.N.BitLen(); bits {
		case 2048, 3072, 4096:
			// SHA-256 for every size: it is what relying parties expect
			// and what the CA/Browser Forum profiles allow for RSA.
			return x509.SHA256WithRSA, nil
		default:
			return x509.UnknownSignatureAlgorithm, fmt.Errorf("%w: RSA key of %d bits", ErrUnsupportedKey, bits)
		}
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return x509.UnknownSignatureAlgorithm, fmt.Errorf("%w: empty ECDSA key", ErrUnsupportedKey)
		}
		// The hash matches the curve strength, as RFC 5480 recommends and
		// the Mozilla root store policy requires.
		switch k.Curve {
		case elliptic.P256():
			return x509.ECDSAWithSHA256, nil
		case elliptic.P384():
			return x509.ECDSAWithSHA384, nil
		default:
			return x509.UnknownSignatureAlgorithm, fmt.Errorf("%w: ECDSA curve %s", ErrUnsupportedKey, k.Curve.Params().Name)
		}
	default:
		return x509.UnknownSignatureAlgorithm, fmt.Errorf("%w: key type %T", ErrUnsupportedKey, pub)
	}
}
