package ca

import (
	"crypto/x509"
	"fmt"
	"slices"
)

// The protocol's spellings (docs/protocol.md, "Spellings") for usages and
// revocation reasons. The parsers are strict: an unknown value is
// ErrProfile, never dropped, because a silently missing usage or reason
// changes what a certificate or CRL says.

var keyUsageNames = map[string]x509.KeyUsage{
	"digital_signature":  x509.KeyUsageDigitalSignature,
	"content_commitment": x509.KeyUsageContentCommitment,
	"key_encipherment":   x509.KeyUsageKeyEncipherment,
	"data_encipherment":  x509.KeyUsageDataEncipherment,
	"key_agreement":      x509.KeyUsageKeyAgreement,
	"cert_sign":          x509.KeyUsageCertSign,
	"crl_sign":           x509.KeyUsageCRLSign,
}

var extKeyUsageNames = map[string]x509.ExtKeyUsage{
	"server_auth":      x509.ExtKeyUsageServerAuth,
	"client_auth":      x509.ExtKeyUsageClientAuth,
	"code_signing":     x509.ExtKeyUsageCodeSigning,
	"email_protection": x509.ExtKeyUsageEmailProtection,
	"time_stamping":    x509.ExtKeyUsageTimeStamping,
	"ocsp_signing":     x509.ExtKeyUsageOCSPSigning,
	"any":              x509.ExtKeyUsageAny,
}

// reasonNames are RFC 5280 5.3.1's CRLReason names in snake case. Code 7 is
// unassigned.
var reasonNames = map[string]int{
	"unspecified":            0,
	"key_compromise":         1,
	"ca_compromise":          2,
	"affiliation_changed":    3,
	"superseded":             4,
	"cessation_of_operation": 5,
	"certificate_hold":       6,
	"remove_from_crl":        8,
	"privilege_withdrawn":    9,
	"aa_compromise":          10,
}

// ParseKeyUsage maps key_usage names to x509.KeyUsage bits. A repeated name
// is harmless; none gives 0, which Profile reads as the default usage.
func ParseKeyUsage(names []string) (x509.KeyUsage, error) {
	var ku x509.KeyUsage
	for _, n := range names {
		bit, ok := keyUsageNames[n]
		if !ok {
			return 0, fmt.Errorf("%w: unknown key_usage %q", ErrProfile, n)
		}
		ku |= bit
	}
	return ku, nil
}

// ParseExtKeyUsage maps ext_key_usage names to x509.ExtKeyUsage values in
// the given order, leaving out repeats: a certificate with the same EKU
// twice is not wrong, only noise that linters flag.
func ParseExtKeyUsage(names []string) ([]x509.ExtKeyUsage, error) {
	var out []x509.ExtKeyUsage
	for _, n := range names {
		eku, ok := extKeyUsageNames[n]
		if !ok {
			return nil, fmt.Errorf("%w: unknown ext_key_usage %q", ErrProfile, n)
		}
		if !slices.Contains(out, eku) {
			out = append(out, eku)
		}
	}
	return out, nil
}

// ParseReason maps a revocation reason name to its RFC 5280 CRLReason code;
// "" (no reason given) is -1.
func ParseReason(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	code, ok := reasonNames[name]
	if !ok {
		return 0, fmt.Errorf("%w: unknown revocation reason %q", ErrProfile, name)
	}
	return code, nil
}

// validReason accepts -1 (none) and the assigned CRLReason codes.
func validReason(code int) bool {
	return code == -1 || code >= 0 && code <= 10 && code != 7
}
