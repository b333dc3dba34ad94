package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
)

// CSR builds a certificate request for an intermediate CA: the template's
// subject DER and its extensions (except SKI and AKI, which the issuing CA
// sets) in the extensionRequest attribute, signed by the slot key.
//
// Like SelfSign it refuses templates that are not CA certificates: the slot
// is a CA slot, and CheckImport would refuse the resulting certificate
// anyway, after a round trip to the PKI.
func CSR(tmpl *x509.Certificate, key crypto.Signer) (*x509.CertificateRequest, error) {
	if err := checkCATemplate(tmpl); err != nil {
		return nil, err
	}
	if key == nil {
		return nil, errNoKey
	}
	sigAlg, err := SignatureAlgorithm(key.Public())
	if err != nil {
		return nil, err
	}
	subject, err := templateSubject(tmpl)
	if err != nil {
		return nil, err
	}
	exts, err := templateExtensions(tmpl)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		RawSubject:         subject,
		SignatureAlgorithm: sigAlg,
		ExtraExtensions:    exts,
	}, key)
	if err != nil {
		return nil, fmt.Errorf("ca: create CSR: %w", err)
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse created CSR: %w", err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("ca: created CSR does not verify: %w", err)
	}
	return req, nil
}
