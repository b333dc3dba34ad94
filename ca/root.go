package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"time"
)

// SelfSign turns a provisioning certificate into a self-signed root CA
// certificate for the slot key.
//
// The subject (and so the issuer) is the template's subject DER unchanged and
// every template extension is copied raw with its criticality, except SKI and
// AKI which are recomputed for the slot key. The validity has the template's
// length and starts at now (truncated to the second). The serial is fresh.
//
// Only the template's raw extensions are used, never its parsed fields, so
// the result says exactly what the PKI asked for: Go's CreateCertificate
// would otherwise regenerate extensions from fields, possibly encoded
// differently or twice.
func SelfSign(tmpl *x509.Certificate, key crypto.Signer, now time.Time) (*x509.Certificate, error) {
	if err := checkCATemplate(tmpl); err != nil {
		return nil, err
	}
	if key == nil {
		return nil, errNoKey
	}
	pub := key.Public()
	sigAlg, err := SignatureAlgorithm(pub)
	if err != nil {
		return nil, err
	}
	subject, err := templateSubject(tmpl)
	if err != nil {
		return nil, err
	}
	notBefore, notAfter, err := rootValidity(tmpl, now)
	if err != nil {
		return nil, err
	}
	ski, err := SubjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	exts, err := rootExtensions(tmpl, ski)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}

	// Every field that CreateCertificate turns into an extension is left
	// zero, so ExtraExtensions is the complete extension list.
	t := &x509.Certificate{
		SerialNumber:       serial,
		RawSubject:         subject,
		NotBefore:          notBefore,
		NotAfter:           notAfter,
		SignatureAlgorithm: sigAlg,
		ExtraExtensions:    exts,
	}
	der, err := x509.CreateCertificate(rand.Reader, t, t, pub, key)
	if err != nil {
		return nil, fmt.Errorf("ca: create root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse created root certificate: %w", err)
	}
	// The HSM produced the signature; make sure it is one relying parties
	// will accept before anyone sees the certificate.
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return nil, fmt.Errorf("ca: created root certificate does not verify: %w", err)
	}
	if !isCA(cert) {
		return nil, fmt.Errorf("%w: created root certificate is not a CA", ErrNotCA)
	}
	return cert, nil
}
