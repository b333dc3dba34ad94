package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
)

const (
	pemCertificate    = "CERTIFICATE"
	pemCSR            = "CERTIFICATE REQUEST"
	pemCSRLegacy      = "NEW CERTIFICATE REQUEST"
	pemPublicKey      = "PUBLIC KEY"
	pemBeginDelimiter = "-----BEGIN "
)

// ParseCertificatePEM parses exactly one CERTIFICATE block. Anything else
// (no block, several blocks, other block types, text around the block apart
// from whitespace) is rejected with ErrBadPEM, so that a key or a chain pasted
// by mistake is not silently accepted as "the" certificate.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	blocks, err := decodePEM(data, pemCertificate)
	if err != nil {
		return nil, err
	}
	if len(blocks) != 1 {
		return nil, fmt.Errorf("%w: want exactly one %s block, got %d", ErrBadPEM, pemCertificate, len(blocks))
	}
	return parseCertificateBlock(blocks[0])
}

// ParseCertificatesPEM parses one or more CERTIFICATE blocks, in order, as
// used for chains.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	blocks, err := decodePEM(data, pemCertificate)
	if err != nil {
		return nil, err
	}
	certs := make([]*x509.Certificate, 0, len(blocks))
	for _, b := range blocks {
		c, err := parseCertificateBlock(b)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// ParseCSRPEM parses exactly one CERTIFICATE REQUEST block. The legacy
// "NEW CERTIFICATE REQUEST" label is accepted because older tools still emit
// it. The CSR signature is not checked here; use CheckSignature.
func ParseCSRPEM(data []byte) (*x509.CertificateRequest, error) {
	blocks, err := decodePEM(data, pemCSR, pemCSRLegacy)
	if err != nil {
		return nil, err
	}
	if len(blocks) != 1 {
		return nil, fmt.Errorf("%w: want exactly one %s block, got %d", ErrBadPEM, pemCSR, len(blocks))
	}
	r, err := x509.ParseCertificateRequest(blocks[0].Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPEM, err)
	}
	return r, nil
}

// EncodeCertificatePEM returns c as a CERTIFICATE PEM block.
func EncodeCertificatePEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw})
}

// EncodeCertificatesPEM returns the certificates as consecutive CERTIFICATE
// PEM blocks, in order.
func EncodeCertificatesPEM(cs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range cs {
		buf.Write(EncodeCertificatePEM(c))
	}
	return buf.Bytes()
}

// EncodeCSRPEM returns r as a CERTIFICATE REQUEST PEM block.
func EncodeCSRPEM(r *x509.CertificateRequest) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: r.Raw})
}

// EncodePublicKeyPEM returns pub as a PKIX "PUBLIC KEY" PEM block, the form
// `openssl pkey -pubin` reads.
func EncodePublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: der}), nil
}

func parseCertificateBlock(b *pem.Block) (*x509.Certificate, error) {
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPEM, err)
	}
	return c, nil
}

// decodePEM returns all blocks of data, requiring each to have one of the
// given types and allowing nothing but whitespace between and around them.
// pem.Decode on its own skips any text before a BEGIN line and even skips
// malformed blocks, which would let junk through unnoticed.
func decodePEM(data []byte, types ...string) ([]*pem.Block, error) {
	var blocks []*pem.Block
	rest := bytes.TrimSpace(data)
	for len(rest) > 0 {
		if !bytes.HasPrefix(rest, []byte(pemBeginDelimiter)) {
			return nil, fmt.Errorf("%w: unexpected data before or after PEM block", ErrBadPEM)
		}
		block, next := pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%w: malformed PEM block", ErrBadPEM)
		}
		// A malformed block makes pem.Decode resume at the next BEGIN line;
		// more than one BEGIN in the consumed text means that happened.
		if consumed := rest[:len(rest)-len(next)]; bytes.Count(consumed, []byte(pemBeginDelimiter)) != 1 {
			return nil, fmt.Errorf("%w: malformed PEM block", ErrBadPEM)
		}
		if !slices.Contains(types, block.Type) {
			return nil, fmt.Errorf("%w: got PEM block %q, want %q", ErrBadPEM, block.Type, types[0])
		}
		if len(block.Headers) > 0 {
			return nil, fmt.Errorf("%w: unexpected headers in %s block", ErrBadPEM, block.Type)
		}
		blocks = append(blocks, block)
		rest = bytes.TrimSpace(next)
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("%w: no PEM block found", ErrBadPEM)
	}
	return blocks, nil
}
