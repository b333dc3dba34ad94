package ca

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
)

// minRSABits is the smallest RSA subject key the CA certifies. It is not in
// the protocol's policy list, but every current root program and zlint
// refuse less, so signing one would only produce a certificate nobody
// accepts.
const minRSABits = 2048

// checkChild applies the CA policy to a certificate before it is signed: c
// is the template for x509.CreateCertificate or the parse of a TBS, pub the
// subject key. Templates and parsed certificates carry the same fields for
// everything checked here, which is what lets IssueCertificate and SignTBS
// share one policy. Each refusal wraps ErrPolicy.
func (is *Issuer) checkChild(c *x509.Certificate, pub crypto.PublicKey) error {
	if err := is.checkValidity(c.NotBefore, c.NotAfter); err != nil {
		return err
	}
	childIsCA := c.BasicConstraintsValid && c.IsCA
	if c.KeyUsage&x509.KeyUsageCertSign != 0 && !childIsCA {
		// RFC 5280 4.2.1.9: keyCertSign without cA would be a certificate
		// some verifiers treat as a CA, without any of the CA constraints.
		return fmt.Errorf("%w: keyCertSign in a certificate that is not a CA", ErrPolicy)
	}
	if childIsCA {
		if err := is.checkPathLen(c); err != nil {
			return err
		}
	}
	if err := checkNameConstraints(is.Cert, c); err != nil {
		return err
	}
	// x509.Verify applies the SAN constraints of the CAs above after
	// signing, but never looks at the subject: that is checked here.
	for _, up := range is.chain() {
		if err := checkSubjectNames(up, c); err != nil {
			return err
		}
	}
	if k, ok := pub.(*rsa.PublicKey); ok && k.N.BitLen() < minRSABits {
		return fmt.Errorf("%w: RSA subject key of %d bits, at least %d required", ErrPolicy, k.N.BitLen(), minRSABits)
	}
	return nil
}

// checkValidity keeps a child's validity inside the CA's: a certificate
// that outlives its issuer would be valid on its own while its chain is not,
// and relying parties differ in what they make of that.
func (is *Issuer) checkValidity(notBefore, notAfter time.Time) error {
	switch {
	case !notBefore.Before(notAfter):
		return fmt.Errorf("%w: validity from %s to %s is empty", ErrPolicy, rfc3339(notBefore), rfc3339(notAfter))
	case notBefore.Before(is.Cert.NotBefore):
		return fmt.Errorf("%w: notBefore %s is before the CA's %s", ErrPolicy, rfc3339(notBefore), rfc3339(is.Cert.NotBefore))
	case notAfter.After(is.Cert.NotAfter):
		return fmt.Errorf("%w: notAfter %s is after the CA's %s", ErrPolicy, rfc3339(notAfter), rfc3339(is.Cert.NotAfter))
	}
	return nil
}

// pathLen returns the pathLenConstraint of a CA certificate, if it has one.
// Parsed certificates say "none" with -1, templates with 0 and
// MaxPathLenZero unset; both read as none here.
func pathLen(c *x509.Certificate) (int, bool) {
	if !c.BasicConstraintsValid || !c.IsCA {
		return 0, false
	}
	if c.MaxPathLen > 0 || c.MaxPathLen == 0 && c.MaxPathLenZero {
		return c.MaxPathLen, true
	}
	return 0, false
}

// checkPathLen makes a child CA's path length strictly below the issuer's.
// x509.Verify cannot catch this when the child is verified as the leaf of
// its own chain (no intermediates below the issuer yet), so it must be
// checked here. An unconstrained child under a constrained issuer is
// refused rather than accepted: its own certificate would then promise more
// than the chain allows.
func (is *Issuer) checkPathLen(c *x509.Certificate) error {
	limit, ok := pathLen(is.Cert)
	if !ok {
		return nil
	}
	if limit == 0 {
		return fmt.Errorf("%w: %q has path length 0 and may not issue CA certificates", ErrPolicy, is.Cert.Subject)
	}
	n, ok := pathLen(c)
	if !ok {
		return fmt.Errorf("%w: a CA certificate under %q (path length %d) needs a path length below %d", ErrPolicy, is.Cert.Subject, limit, limit)
	}
	if n >= limit {
		return fmt.Errorf("%w: path length %d is not below the CA's %d", ErrPolicy, n, limit)
	}
	return nil
}

// checkNameConstraints checks c's subject alternative names, and the names
// in its subject that relying parties act on (see checkSubjectNames),
// against the issuing CA's name constraints (RFC 5280 4.2.1.10) before
// signing. The SAN constraints of CAs further up are left to x509.Verify
// after signing; this check exists so that the common case, a constrained
// issuing CA, is refused before the HSM signs anything.
//
// Where Go's verifier is more lenient than RFC 5280 (it lets a URI
// constraint without a leading period match subdomains, an email domain
// constraint match subdomains) this check follows the RFC; where the RFC is
// more lenient, Go's later verification still refuses. The result is the
// stricter of both.
func checkNameConstraints(ca, c *x509.Certificate) error {
	if err := checkNames("DNS name", c.DNSNames, ca.PermittedDNSDomains, ca.ExcludedDNSDomains, dnsWithin, dnsReaches); err != nil {
		return err
	}
	if err := checkNames("email address", c.EmailAddresses, ca.PermittedEmailAddresses, ca.ExcludedEmailAddresses, emailWithin, emailWithin); err != nil {
		return err
	}
	if err := checkNames("IP address", c.IPAddresses, ca.PermittedIPRanges, ca.ExcludedIPRanges, ipWithin, ipWithin); err != nil {
		return err
	}
	if len(ca.PermittedURIDomains) > 0 || len(ca.ExcludedURIDomains) > 0 {
		for _, u := range c.URIs {
			if _, err := uriHost(u); err != nil {
				return fmt.Errorf("%w: URI %q cannot be checked against the CA's name constraints: %w", ErrPolicy, u, err)
			}
		}
	}
	if err := checkNames("URI", c.URIs, ca.PermittedURIDomains, ca.ExcludedURIDomains, uriWithin, uriWithin); err != nil {
		return err
	}
	return checkSubjectNames(ca, c)
}

// checkNames refuses a name that may fall in an excluded subtree or that
// falls in none of the permitted ones (when there are any). Exclusion uses
// its own test because a wildcard name stands for names it does not
// literally match.
func checkNames[N, C any](kind string, names []N, permitted, excluded []C, within, reaches func(N, C) bool) error {
	for _, n := range names {
		for _, c := range excluded {
			if reaches(n, c) {
				return fmt.Errorf("%w: %s %q is excluded by the CA's name constraint %q", ErrPolicy, kind, fmt.Sprint(n), fmt.Sprint(c))
			}
		}
		if len(permitted) > 0 && !slices.ContainsFunc(permitted, func(c C) bool { return within(n, c) }) {
			subtrees := make([]string, len(permitted))
			for i, c := range permitted {
				subtrees[i] = fmt.Sprint(c)
			}
			return fmt.Errorf("%w: %s %q is outside the CA's permitted names %q", ErrPolicy, kind, fmt.Sprint(n), subtrees)
		}
	}
	return nil
}

// dnsWithin reports whether name lies in the subtree of a dNSName
// constraint: the constraint itself and every name made by adding labels on
// the left. A leading period restricts it to proper subdomains, the reading
// of RFC 5280 errata 5997 that Go and OpenSSL share; an empty constraint is
// the whole namespace. A wildcard SAN is compared as the literal label "*",
// so "*.a.example" is within "a.example" and not within "b.a.example".
func dnsWithin(name, constraint string) bool {
	name = strings.ToLower(name)
	constraint = strings.ToLower(constraint)
	switch {
	case constraint == "":
		return true
	case strings.HasPrefix(constraint, "."):
		return len(name) > len(constraint) && strings.HasSuffix(name, constraint)
	default:
		return name == constraint || strings.HasSuffix(name, "."+constraint)
	}
}

// dnsReaches reports whether name may stand for a name inside the
// constraint's subtree. It differs from dnsWithin only for wildcards:
// "*.a.example" stands for "x.a.example", so it reaches into the excluded
// subtree "x.a.example" although the literal name is not inside it.
func dnsReaches(name, constraint string) bool {
	if dnsWithin(name, constraint) {
		return true
	}
	parent, ok := strings.CutPrefix(strings.ToLower(name), "*.")
	if !ok || strings.HasPrefix(constraint, ".") {
		// A leading-period constraint excludes only names below its
		// domain, which a single wildcard label cannot reach unless the
		// literal test above already matched.
		return false
	}
	_, rest, ok := strings.Cut(strings.ToLower(constraint), ".")
	return ok && rest == parent
}

// emailWithin implements the three rfc822Name constraint forms of RFC 5280
// 4.2.1.10: a full mailbox, a host (that host only) and a domain with a
// leading period (any host below it). The local part is compared exactly,
// the host case-insensitively.
func emailWithin(addr, constraint string) bool {
	if constraint == "" {
		return true
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return false
	}
	local, host := addr[:at], addr[at+1:]
	if cat := strings.LastIndexByte(constraint, '@'); cat >= 0 {
		return local == constraint[:cat] && strings.EqualFold(host, constraint[cat+1:])
	}
	if strings.HasPrefix(constraint, ".") {
		return dnsWithin(host, constraint)
	}
	return strings.EqualFold(host, constraint)
}

// ipWithin uses net.IPNet.Contains, which reads an IPv4-mapped IPv6
// address as the IPv4 address. That is how CreateCertificate encodes such
// an address anyway, and for exclusions it is the safe reading; where it is
// the lenient one (a 16-byte mapped address from a TBS against an IPv4
// permitted range), Go's verifier, comparing lengths, refuses afterwards.
func ipWithin(ip net.IP, n *net.IPNet) bool {
	return n != nil && n.Contains(ip)
}

// uriWithin applies a uniformResourceIdentifier constraint to the URI's
// host: with a leading period any host below the domain, otherwise exactly
// that host (RFC 5280 4.2.1.10).
func uriWithin(u *url.URL, constraint string) bool {
	if constraint == "" {
		return true
	}
	host, err := uriHost(u)
	if err != nil {
		return false
	}
	if strings.HasPrefix(constraint, ".") {
		return dnsWithin(host, constraint)
	}
	return strings.EqualFold(host, constraint)
}

// uriHost returns the host a URI constraint applies to. RFC 5280 requires
// a fully qualified domain name there, so a URI without host (a URN) or
// with an IP literal cannot be judged and is refused under URI constraints.
func uriHost(u *url.URL) (string, error) {
	if u == nil {
		return "", errors.New("no URI")
	}
	host := u.Hostname()
	if host == "" {
		return "", errors.New("the URI has no host")
	}
	if net.ParseIP(host) != nil {
		return "", errors.New("the URI's host is an IP address")
	}
	return host, nil
}

// checkSANSyntax refuses subject alternative names a relying party could
// misread: the verifiers compare names textually, so an odd spelling
// ("Example.COM.", a space, an empty label) can slip past name constraints
// or match where it should not. The caller wraps the error with ErrProfile
// or ErrPolicy depending on who supplied the names.
func checkSANSyntax(c *x509.Certificate) error {
	for _, n := range c.DNSNames {
		if !validDNSName(strings.TrimPrefix(n, "*.")) {
			return fmt.Errorf("invalid DNS name %q", n)
		}
	}
	for _, e := range c.EmailAddresses {
		if !validMailbox(e) {
			return fmt.Errorf("invalid email address %q", e)
		}
	}
	for _, ip := range c.IPAddresses {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return fmt.Errorf("invalid IP address %q", ip)
		}
	}
	for _, u := range c.URIs {
		if u == nil || u.Scheme == "" {
			return fmt.Errorf("URI %q is not absolute", u)
		}
	}
	return nil
}

// validDNSName accepts LDH host names (RFC 1034 preferred syntax, which
// covers IDNs in their xn-- form), without a trailing dot.
func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			b := label[i]
			if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-') {
				return false
			}
		}
	}
	return true
}

// validMailboxLocal accepts printable ASCII without spaces, which is what
// an rfc822Name (IA5String) can carry without quoting trouble.
func validMailboxLocal(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' || s[i] == '@' {
			return false
		}
	}
	return true
}

// verifyIssued checks a freshly signed certificate the way a relying party
// would: the whole chain with x509.Verify at the certificate's notBefore,
// which checks the signature against the CA certificate and enforces the
// name constraints of every CA on the path. The certificate is discarded
// when this fails; the checks before signing are meant to make that a fault
// path only.
func (is *Issuer) verifyIssued(c *x509.Certificate) error {
	if _, err := c.Verify(is.verifyOptions(c.NotBefore)); err != nil {
		// Only now is the signature checked on its own (a second verification
		// on every certificate cost time): a bad one is the token's fault, not
		// the request's.
		if serr := c.CheckSignatureFrom(is.Cert); serr != nil {
			return fmt.Errorf("ca: the signed certificate does not verify against the CA certificate: %w", serr)
		}
		return fmt.Errorf("%w: the signed certificate does not verify through the CA's chain: %w", ErrPolicy, err)
	}
	return nil
}
