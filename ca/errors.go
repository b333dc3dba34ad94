// Package ca turns an HSM provisioning certificate into a self-signed root
// CA certificate or a CSR signed by the slot key, checks certificates before
// the appliance imports them, and makes the signatures of a provisioned CA
// slot (certificates, CRLs, CMS, OCSP, raw digests) under the CA policy.
//
// Keys are only ever handled as crypto.Signer / crypto.PublicKey because the
// private key lives in the HSM.
package ca

import "errors"

// Callers branch on these with errors.Is; the returned errors wrap them with
// the detail a human needs.
var (
	// ErrBadPEM means the input is not PEM of the expected type: garbage, a
	// different block type, junk around the blocks or undecodable DER.
	ErrBadPEM = errors.New("ca: bad PEM input")
	// ErrKeyMismatch means a certificate's public key is not the slot's key.
	ErrKeyMismatch = errors.New("ca: certificate key does not match slot key")
	// ErrNotCA means a certificate lacks basicConstraints CA:TRUE, or has a
	// keyUsage extension without keyCertSign.
	ErrNotCA = errors.New("ca: certificate is not a CA certificate")
	// ErrChain means the certificate does not chain to a trusted root.
	ErrChain = errors.New("ca: certificate chain does not verify")
	// ErrNotValidNow means the current time is outside the validity period.
	ErrNotValidNow = errors.New("ca: certificate is not valid at this time")
	// ErrUnsupportedKey means the key is not RSA 2048/3072/4096 or ECDSA
	// P-256/P-384.
	ErrUnsupportedKey = errors.New("ca: unsupported key")
	// ErrPolicy means the signature would break the CA's policy (see
	// Issuer); nothing was signed, or what was signed was discarded.
	ErrPolicy = errors.New("ca: policy denied")
	// ErrProfile means the request itself is malformed: an invalid profile,
	// an unknown name, a bad CRL or OCSP entry, an undecodable TBS. The
	// protocol answers it with bad_request, ErrPolicy with policy_denied.
	ErrProfile = errors.New("ca: invalid profile")
)
