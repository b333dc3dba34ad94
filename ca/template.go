package ca

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"
)

var (
	oidExtSubjectKeyID       = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidExtKeyUsage           = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtBasicConstraints   = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtAuthorityKeyID     = asn1.ObjectIdentifier{2, 5, 29, 35}
	noWellDefinedExpiration  = time.Date(9999, time.December, 31, 23, 59, 59, 0, time.UTC)
	errTemplateMissing       = errors.New("ca: no template certificate")
	errTemplateValidityEmpty = errors.New("ca: template validity period is empty")
	errNoKey                 = errors.New("ca: no signing key")
)

// authorityKeyID is the RFC 5280 AuthorityKeyIdentifier with only the
// keyIdentifier field, the form RFC 5280 requires for self-signed CAs.
type authorityKeyID struct {
	KeyIdentifier []byte `asn1:"optional,tag:0"`
}

// isCA reports whether c is usable as a CA certificate: basicConstraints
// CA:TRUE and, if keyUsage is present at all, keyCertSign among its bits.
// The extension itself is looked at as well because an extension with no
// bits set parses to KeyUsage 0, which would otherwise look like "absent".
func isCA(c *x509.Certificate) bool {
	if !c.BasicConstraintsValid || !c.IsCA {
		return false
	}
	return !hasKeyUsage(c) || c.KeyUsage&x509.KeyUsageCertSign != 0
}

// hasKeyUsage reports whether c has a keyUsage extension; see isCA for why
// the KeyUsage field alone does not tell.
func hasKeyUsage(c *x509.Certificate) bool {
	return c.KeyUsage != 0 || hasExtension(c.Extensions, oidExtKeyUsage)
}

// checkCATemplate rejects templates that cannot yield a CA certificate. The
// extension list is checked as well as the parsed fields because only the
// extensions are copied: a hand-built template with IsCA set but no raw
// extensions would otherwise produce a non-CA certificate.
func checkCATemplate(tmpl *x509.Certificate) error {
	if tmpl == nil {
		return errTemplateMissing
	}
	if !isCA(tmpl) {
		return fmt.Errorf("%w: template lacks basicConstraints CA:TRUE or keyCertSign", ErrNotCA)
	}
	if !hasExtension(tmpl.Extensions, oidExtBasicConstraints) {
		return fmt.Errorf("%w: template has no raw basicConstraints extension (use a parsed certificate as template)", ErrNotCA)
	}
	return nil
}

// templateSubject returns the template's subject DER unchanged, so names with
// unusual string types or attribute order survive; re-encoding pkix.Name
// could alter them.
func templateSubject(tmpl *x509.Certificate) ([]byte, error) {
	if len(tmpl.RawSubject) > 0 {
		return tmpl.RawSubject, nil
	}
	der, err := asn1.Marshal(tmpl.Subject.ToRDNSequence())
	if err != nil {
		return nil, fmt.Errorf("ca: encode template subject: %w", err)
	}
	return der, nil
}

// checkUniqueExtensions refuses duplicate extension OIDs: a certificate
// with two extensions of the same OID is invalid (RFC 5280 4.2) and parsers
// reject it. Parsed certificates never have them, hand-built templates might.
func checkUniqueExtensions(exts []pkix.Extension) error {
	seen := make(map[string]bool, len(exts))
	for _, e := range exts {
		key := e.Id.String()
		if seen[key] {
			return fmt.Errorf("ca: template has duplicate extension %s", key)
		}
		seen[key] = true
	}
	return nil
}

// templateExtensions returns the template's extensions except SKI and AKI,
// which describe the template's own key and must not be carried over to the
// slot key.
func templateExtensions(tmpl *x509.Certificate) ([]pkix.Extension, error) {
	if err := checkUniqueExtensions(tmpl.Extensions); err != nil {
		return nil, err
	}
	out := make([]pkix.Extension, 0, len(tmpl.Extensions))
	for _, e := range tmpl.Extensions {
		if e.Id.Equal(oidExtSubjectKeyID) || e.Id.Equal(oidExtAuthorityKeyID) {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// rootExtensions returns the template's extensions with SKI and AKI replaced
// by ones computed from ski. Replacements keep the template's position so
// the extension order matches the template; missing ones are appended.
func rootExtensions(tmpl *x509.Certificate, ski []byte) ([]pkix.Extension, error) {
	if err := checkUniqueExtensions(tmpl.Extensions); err != nil {
		return nil, err
	}
	skiValue, err := asn1.Marshal(ski)
	if err != nil {
		return nil, fmt.Errorf("ca: encode subjectKeyIdentifier: %w", err)
	}
	akiValue, err := asn1.Marshal(authorityKeyID{KeyIdentifier: ski})
	if err != nil {
		return nil, fmt.Errorf("ca: encode authorityKeyIdentifier: %w", err)
	}
	// Both are non-critical: RFC 5280 4.2.1.1 and 4.2.1.2 require it.
	skiExt := pkix.Extension{Id: oidExtSubjectKeyID, Value: skiValue}
	akiExt := pkix.Extension{Id: oidExtAuthorityKeyID, Value: akiValue}

	out := make([]pkix.Extension, 0, len(tmpl.Extensions)+2)
	var haveSKI, haveAKI bool
	for _, e := range tmpl.Extensions {
		switch {
		case e.Id.Equal(oidExtSubjectKeyID):
			out = append(out, skiExt)
			haveSKI = true
		case e.Id.Equal(oidExtAuthorityKeyID):
			out = append(out, akiExt)
			haveAKI = true
		default:
			out = append(out, e)
		}
	}
	if !haveSKI {
		out = append(out, skiExt)
	}
	if !haveAKI {
		out = append(out, akiExt)
	}
	return out, nil
}

func hasExtension(exts []pkix.Extension, oid asn1.ObjectIdentifier) bool {
	for _, e := range exts {
		if e.Id.Equal(oid) {
			return true
		}
	}
	return false
}

// randomSerial returns a uniformly random serial in [1, 2^128). 128 bits is
// well above the 64 bits of entropy the CA/Browser Forum asks for, and even
// with the sign-padding byte DER needs when the top bit is set the encoding
// is at most 17 octets, inside RFC 5280's limit of 20.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("ca: generate serial number: %w", err)
		}
		// Zero is not a positive integer (RFC 5280 4.1.2.2).
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// rootValidity keeps the template's validity length but starts it now, since
// the template's own dates relate to when the PKI issued it, not to when the
// slot becomes a CA.
func rootValidity(tmpl *x509.Certificate, now time.Time) (notBefore, notAfter time.Time, err error) {
	if !tmpl.NotAfter.After(tmpl.NotBefore) {
		return time.Time{}, time.Time{}, errTemplateValidityEmpty
	}
	notBefore = now.UTC().Truncate(time.Second)
	// RFC 5280 4.1.2.5 reserves this date for "no well-defined expiration";
	// shifting it would turn that into an arbitrary date.
	if tmpl.NotAfter.Equal(noWellDefinedExpiration) {
		return notBefore, noWellDefinedExpiration, nil
	}
	return notBefore, notBefore.Add(tmpl.NotAfter.Sub(tmpl.NotBefore)), nil
}
