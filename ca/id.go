package ca

import (
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
)

// ID returns the protocol's ca_id for a key: the lowercase hex SHA-256 of the
// DER SubjectPublicKeyInfo. It equals
//
//	openssl pkey -pubin -in pub.pem -outform DER | sha256sum
//
// so operators can compute it from an exported public key without our tools.
func ID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// SubjectKeyID returns the key identifier of RFC 5280 section 4.2.1.2 method
// (1): the SHA-1 of the subjectPublicKey BIT STRING contents. Go's
// CreateCertificate now defaults to a truncated SHA-256 instead; we compute
// it ourselves so the identifier does not change with the Go version and
// matches what OpenSSL derives for the same key.
func SubjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if rest, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("ca: parse SubjectPublicKeyInfo: %w", err)
	} else if len(rest) > 0 {
		return nil, errors.New("ca: trailing data after SubjectPublicKeyInfo")
	}
	sum := sha1.Sum(spki.PublicKey.Bytes)
	return sum[:], nil
}
