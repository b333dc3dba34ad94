package ca

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var (
	oidCommonName   = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidEmailAddress = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
)

// subjectValue is one decoded commonName or emailAddress of a subject.
type subjectValue struct {
	s   string
	ia5 bool // encoded as IA5String, the only form OpenSSL checks for an email
}

// checkSubjectNames applies the CA's name constraints to the names in the
// subject that relying parties act on, which x509.Verify does not check:
//   - every emailAddress attribute against the rfc822Name constraints, as
//     RFC 5280 4.2.1.10 requires and OpenSSL does (with or without SANs);
//   - a host-like commonName (see hostLikeCN) against the dNSName
//     constraints when the certificate has no DNS SAN, as OpenSSL does
//     since 1.1.0: clients that still fall back to the CN would otherwise
//     accept a name the CA may not certify.
//
// A value that cannot be judged (a NUL in a commonName, an emailAddress
// that is not an IA5String mailbox) is refused under constraints of its
// type, as OpenSSL refuses to verify it.
func checkSubjectNames(ca, c *x509.Certificate) error {
	checkDNS := len(c.DNSNames) == 0 && (len(ca.PermittedDNSDomains) > 0 || len(ca.ExcludedDNSDomains) > 0)
	checkEmail := len(ca.PermittedEmailAddresses) > 0 || len(ca.ExcludedEmailAddresses) > 0
	if !checkDNS && !checkEmail {
		return nil
	}
	raw, err := templateSubject(c)
	if err != nil {
		return err
	}
	cns, emails, err := subjectNames(raw)
	if err != nil {
		return fmt.Errorf("%w: the subject cannot be checked against the CA's name constraints: %w", ErrPolicy, err)
	}
	if checkDNS {
		var hosts []string
		for _, cn := range cns {
			if strings.IndexByte(cn.s, 0) >= 0 {
				return fmt.Errorf("%w: subject commonName %q contains a NUL and cannot be checked against the CA's name constraints", ErrPolicy, cn.s)
			}
			if h, ok := hostLikeCN(cn.s); ok {
				hosts = append(hosts, h)
			}
		}
		if err := checkNames("subject commonName", hosts, ca.PermittedDNSDomains, ca.ExcludedDNSDomains, dnsWithin, dnsReaches); err != nil {
			return err
		}
	}
	if !checkEmail {
		return nil
	}
	addrs := make([]string, len(emails))
	for i, e := range emails {
		if !e.ia5 || !validMailbox(e.s) {
			return fmt.Errorf("%w: subject emailAddress %q is not an IA5String mailbox and cannot be checked against the CA's name constraints", ErrPolicy, e.s)
		}
		addrs[i] = e.s
	}
	return checkNames("subject emailAddress", addrs, ca.PermittedEmailAddresses, ca.ExcludedEmailAddresses, emailWithin, emailWithin)
}

// hostLikeCN reports whether a commonName reads as a host name, and returns
// the name to check. It follows OpenSSL: two or more labels of letters,
// digits, hyphens and underscores, no label empty or starting or ending
// with a hyphen. A single label ("Device 42", "sensor7") is not host-like,
// so such CNs stay usable under a DNS-constrained CA. Stricter than OpenSSL,
// a leading "*." wildcard label and one trailing root dot are allowed, since
// a client matching the CN may honour both; the wildcard is kept so that
// exclusion treats it as the names it stands for.
func hostLikeCN(cn string) (string, bool) {
	name := strings.TrimSuffix(cn, ".")
	labels := strings.Split(strings.TrimPrefix(name, "*."), ".")
	if len(labels) < 2 && !strings.HasPrefix(name, "*.") {
		return "", false
	}
	for _, l := range labels {
		if l == "" || l[0] == '-' || l[len(l)-1] == '-' {
			return "", false
		}
		for i := 0; i < len(l); i++ {
			b := l[i]
			if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '_') {
				return "", false
			}
		}
	}
	return name, true
}

// validMailbox is the rfc822Name syntax checkSANSyntax requires of SANs.
func validMailbox(addr string) bool {
	at := strings.LastIndexByte(addr, '@')
	return at > 0 && validMailboxLocal(addr[:at]) && validDNSName(addr[at+1:])
}

// subjectNames returns the commonName and emailAddress values of a DER
// Name, in order. The template for a CSR carries only the raw subject, and
// encoding/asn1 leaves string types it does not know (BMPString) empty, so
// the Name is read here rather than from a pkix.Name.
func subjectNames(raw []byte) (cns, emails []subjectValue, err error) {
	in := cryptobyte.String(raw)
	var rdns cryptobyte.String
	if !in.ReadASN1(&rdns, cbasn1.SEQUENCE) || !in.Empty() {
		return nil, nil, errors.New("the subject is not a DER Name")
	}
	for !rdns.Empty() {
		var set cryptobyte.String
		if !rdns.ReadASN1(&set, cbasn1.SET) {
			return nil, nil, errors.New("malformed relative distinguished name")
		}
		for !set.Empty() {
			var atv, value cryptobyte.String
			var oid asn1.ObjectIdentifier
			var tag cbasn1.Tag
			if !set.ReadASN1(&atv, cbasn1.SEQUENCE) || !atv.ReadASN1ObjectIdentifier(&oid) ||
				!atv.ReadAnyASN1(&value, &tag) || !atv.Empty() {
				return nil, nil, errors.New("malformed subject attribute")
			}
			isCN, isEmail := oid.Equal(oidCommonName), oid.Equal(oidEmailAddress)
			if !isCN && !isEmail {
				continue
			}
			s, err := decodeDirectoryString(tag, value)
			if err != nil {
				return nil, nil, fmt.Errorf("attribute %v: %w", oid, err)
			}
			v := subjectValue{s: s, ia5: tag == cbasn1.IA5String}
			if isCN {
				cns = append(cns, v)
			} else {
				emails = append(emails, v)
			}
		}
	}
	return cns, emails, nil
}

// decodeDirectoryString decodes the string types Go's certificate parser
// accepts in names; any other type is an error, since a value that cannot
// be read cannot be judged.
func decodeDirectoryString(tag cbasn1.Tag, v []byte) (string, error) {
	switch tag {
	case cbasn1.UTF8String, cbasn1.PrintableString, cbasn1.IA5String, cbasn1.Tag(asn1.TagNumericString):
		if !utf8.Valid(v) {
			return "", errors.New("invalid string encoding")
		}
		return string(v), nil
	case cbasn1.T61String:
		// Read as Latin-1, as Go and BoringSSL do.
		r := make([]rune, len(v))
		for i, b := range v {
			r[i] = rune(b)
		}
		return string(r), nil
	case cbasn1.Tag(asn1.TagBMPString):
		if len(v)%2 != 0 {
			return "", errors.New("invalid BMPString")
		}
		u := make([]uint16, len(v)/2)
		for i := range u {
			u[i] = uint16(v[2*i])<<8 | uint16(v[2*i+1])
		}
		return string(utf16.Decode(u)), nil
	}
	return "", fmt.Errorf("unsupported string type %v", tag)
}
