package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// CheckImport decides whether cert may be imported into a slot whose key is
// slotKey. The checks run from cheapest and most telling to the chain, and
// the first failure is returned wrapped around its typed error:
// ErrKeyMismatch, ErrNotCA, ErrNotValidNow, ErrChain.
//
// chain holds the certificates that came with cert; known holds CA
// certificates the appliance already has (for example a root provisioned in
// another slot). Self-signed certificates among them are trust anchors, the
// rest are intermediates. A self-signed cert is verified as a root on its
// own. The system trust store is never consulted.
func CheckImport(cert *x509.Certificate, chain, known []*x509.Certificate, slotKey crypto.PublicKey, now time.Time) error {
	if cert == nil {
		return errors.New("ca: no certificate to import")
	}
	if !publicKeyEqual(cert.PublicKey, slotKey) {
		return fmt.Errorf("%w: certificate for %q is for a different key", ErrKeyMismatch, cert.Subject)
	}
	if !isCA(cert) {
		return fmt.Errorf("%w: %q lacks basicConstraints CA:TRUE or keyCertSign", ErrNotCA, cert.Subject)
	}
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return fmt.Errorf("%w: %q is valid from %s to %s, now is %s", ErrNotValidNow, cert.Subject,
			cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}

	// A non-nil Roots pool is essential: with nil, Verify falls back to the
	// system trust store, which must play no part here.
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		// CA certificates often carry no EKU or a restricted one; the
		// appliance does not decide usage here.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	if isSelfSigned(cert) {
		opts.Roots.AddCert(cert)
	} else {
		for _, c := range append(append([]*x509.Certificate{}, chain...), known...) {
			if c == nil {
				continue
			}
			if isSelfSigned(c) {
				opts.Roots.AddCert(c)
			} else {
				opts.Intermediates.AddCert(c)
			}
		}
	}
	if _, err := cert.Verify(opts); err != nil {
		return fmt.Errorf("%w: %q: %w", ErrChain, cert.Subject, err)
	}
	return nil
}

// isSelfSigned reports whether c names itself as issuer and its signature
// verifies with its own key. The name alone is not enough: an intermediate
// may share its issuer's name.
func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && b != nil && k.Equal(b)
}
