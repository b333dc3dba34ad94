package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"time"
)

// Issuer is a provisioned CA slot: its certificate, the chain above it (may
// be empty for a root), and the slot key.
//
// Chain is in issuing order: Chain[0] issued Cert, each further certificate
// issued the one before it. Its last certificate (Cert itself for a root) is
// the trust anchor the issued certificates are verified against, so a chain
// that stops below the root still works, at the price of not checking the
// constraints of CAs above it.
//
// Every signing method checks Usable first and then the part of the CA
// policy of the protocol that applies to what it signs; a refusal wraps
// ErrPolicy, a malformed request ErrProfile. The methods never modify the
// Issuer, so one Issuer may serve concurrent requests if its Signer can.
type Issuer struct {
	Cert   *x509.Certificate
	Chain  []*x509.Certificate
	Signer crypto.Signer
}

// Usable checks the CA certificate itself before any signature: CA:TRUE (and
// keyCertSign if it has a keyUsage extension), valid at now, and the
// Signer's public key equal to the certificate's. Else ErrPolicy.
//
// The key comparison guards against a slot whose token was swapped or
// re-keyed behind the appliance's back: every signature would otherwise
// be one nobody can verify against the published CA certificate.
func (is *Issuer) Usable(now time.Time) error {
	if is == nil || is.Cert == nil {
		return fmt.Errorf("%w: the slot has no CA certificate", ErrPolicy)
	}
	if is.Signer == nil {
		return fmt.Errorf("%w: the slot has no key", ErrPolicy)
	}
	if !isCA(is.Cert) {
		return fmt.Errorf("%w: %q is not a CA certificate (no basicConstraints CA:TRUE or no keyCertSign)", ErrPolicy, is.Cert.Subject)
	}
	if now.Before(is.Cert.NotBefore) || now.After(is.Cert.NotAfter) {
		return fmt.Errorf("%w: CA certificate %q is valid from %s to %s, now is %s", ErrPolicy, is.Cert.Subject,
			rfc3339(is.Cert.NotBefore), rfc3339(is.Cert.NotAfter), rfc3339(now))
	}
	if !publicKeyEqual(is.Cert.PublicKey, is.Signer.Public()) {
		return fmt.Errorf("%w: the slot key is not the key of CA certificate %q", ErrPolicy, is.Cert.Subject)
	}
	return nil
}

// keyID is the identifier issued certificates and CRLs carry as AKI. The CA
// certificate's own SKI wins so that AKI/SKI chaining works whatever method
// the CA's issuer used; method 1 is only the fallback for a CA certificate
// without SKI.
func (is *Issuer) keyID() ([]byte, error) {
	if len(is.Cert.SubjectKeyId) > 0 {
		return is.Cert.SubjectKeyId, nil
	}
	return SubjectKeyID(is.Cert.PublicKey)
}

// algorithm returns how this CA signs: the algorithm, its DER
// AlgorithmIdentifier and its digest.
func (is *Issuer) algorithm() (x509.SignatureAlgorithm, []byte, crypto.Hash, error) {
	alg, err := SignatureAlgorithm(is.Signer.Public())
	if err != nil {
		return 0, nil, 0, err
	}
	ai, hash, err := signatureAlgorithmID(alg)
	if err != nil {
		return 0, nil, 0, err
	}
	return alg, ai, hash, nil
}

// signMessage signs msg as a whole (hash, then the slot key) for the
// structures we encode ourselves, and returns the AlgorithmIdentifier to put
// next to the signature.
//
// The signature is checked against the CA certificate before it leaves: a
// faulty token or a wrong PSS/PKCS#1 choice in a driver must not produce
// a response that relying parties reject, or worse, cache.
func (is *Issuer) signMessage(msg []byte) (ai, sig []byte, err error) {
	alg, ai, hash, err := is.algorithm()
	if err != nil {
		return nil, nil, err
	}
	h := hash.New()
	h.Write(msg)
	sig, err = is.Signer.Sign(rand.Reader, h.Sum(nil), hash)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: sign: %w", err)
	}
	if err := is.Cert.CheckSignature(alg, msg, sig); err != nil {
		return nil, nil, fmt.Errorf("ca: the slot key produced a signature that does not verify: %w", err)
	}
	return ai, sig, nil
}

// verifyOptions verifies against the issuer's own path only; a non-nil
// Roots pool keeps the system trust store out, as in CheckImport. Usage is
// not judged here: the profile decides EKUs, and CA certificates often
// carry none.
func (is *Issuer) verifyOptions(at time.Time) x509.VerifyOptions {
	path := append([]*x509.Certificate{is.Cert}, is.chain()...)
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	opts.Roots.AddCert(path[len(path)-1])
	for _, c := range path[:len(path)-1] {
		opts.Intermediates.AddCert(c)
	}
	return opts
}

// chain is Chain without nil entries, which a caller assembling it from
// optional storage fields might leave; the libraries it is handed to
// dereference every entry.
func (is *Issuer) chain() []*x509.Certificate {
	out := make([]*x509.Certificate, 0, len(is.Chain))
	for _, c := range is.Chain {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

func rfc3339(t time.Time) string {
	return t.UTC().Format(time.RFC3339)
}
