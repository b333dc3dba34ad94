package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
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

var (
	oidSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
)

// signatureAlgorithmID returns the DER AlgorithmIdentifier and the digest for
// an algorithm SignatureAlgorithm can return, for the structures crypto/x509
// does not build for us (a signed TBS, OCSP). RSA carries an explicit NULL
// (RFC 4055 section 5) and ECDSA no parameters at all (RFC 5758 section 3.2),
// the encodings Go and OpenSSL produce.
func signatureAlgorithmID(alg x509.SignatureAlgorithm) ([]byte, crypto.Hash, error) {
	var ai pkix.AlgorithmIdentifier
	var hash crypto.Hash
	switch alg {
	case x509.SHA256WithRSA:
		ai, hash = pkix.AlgorithmIdentifier{Algorithm: oidSHA256WithRSA, Parameters: asn1.NullRawValue}, crypto.SHA256
	case x509.ECDSAWithSHA256:
		ai, hash = pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA256}, crypto.SHA256
	case x509.ECDSAWithSHA384:
		ai, hash = pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA384}, crypto.SHA384
	default:
		return nil, 0, fmt.Errorf("%w: signature algorithm %v", ErrUnsupportedKey, alg)
	}
	der, err := asn1.Marshal(ai)
	if err != nil {
		return nil, 0, fmt.Errorf("ca: encode signature algorithm: %w", err)
	}
	return der, hash, nil
}
