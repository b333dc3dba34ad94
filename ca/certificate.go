package ca

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"slices"
	"time"
)

// Profile is what the PKI decides about a certificate, as opposed to what
// the CSR asks for. Of the CSR only the subject, the key and (unless the
// profile overrides them) the subject alternative names are used; its other
// requested extensions are ignored, so a requester cannot add key usages,
// CA flags or constraints the PKI did not choose.
type Profile struct {
	NotBefore time.Time // zero: now (truncated to the second)
	NotAfter  time.Time // zero: NotBefore + Validity
	// Validity is used when NotAfter is zero. Neither or both set is
	// ErrProfile: the protocol offers one or the other.
	Validity time.Duration
	Serial   *big.Int // nil: random 128-bit positive
	IsCA     bool
	// MaxPathLen is only for IsCA; nil leaves it to the issuer's: one below
	// a constrained issuer's path length (so the child promises no more
	// than the chain allows), absent under an unconstrained issuer.
	MaxPathLen *int
	// KeyUsage 0 means the usual one: certSign|crlSign for a CA,
	// digitalSignature for a leaf plus keyEncipherment for an RSA leaf key
	// (RSA key transport, as in TLS 1.2 RSA key exchange or CMS).
	KeyUsage    x509.KeyUsage
	ExtKeyUsage []x509.ExtKeyUsage
	// When any of these four is non-nil the CSR's SANs are replaced by
	// them (the nil ones standing for none); otherwise the CSR's are used.
	DNSNames       []string
	IPAddresses    []net.IP
	EmailAddresses []string
	URIs           []*url.URL

	CRLDistributionPoints  []string
	OCSPServers            []string
	IssuingCertificateURLs []string
}

// IssueCertificate signs a certificate for the CSR under the CA policy,
// each refusal wrapping ErrPolicy with the reason:
//   - Usable(now);
//   - the CSR's own signature verifies;
//   - the validity lies inside the CA's and is not empty;
//   - a CA certificate's path length is below the issuer's (see Profile);
//   - the subject alternative names respect the issuer's name constraints,
//     checked before signing, and the signed certificate verifies with
//     x509.Verify through the whole chain at its notBefore, which enforces
//     the constraints of every CA above as well;
//   - the subject's emailAddress attributes, and a host-like commonName
//     when there is no DNS SAN, respect the name constraints of the issuer
//     and every CA in its chain (checkSubjectNames), which x509.Verify
//     would not catch;
//   - an RSA subject key has at least 2048 bits.
//
// The subject is the CSR's, byte for byte; the issuer is the CA's subject,
// AKI the CA's SKI, SKI the RFC 5280 method 1 identifier of the CSR key,
// the signature algorithm SignatureAlgorithm of the CA key. Profile
// mistakes (an empty validity request, a malformed serial or name) are
// ErrProfile.
func (is *Issuer) IssueCertificate(csr *x509.CertificateRequest, p Profile, now time.Time) (*x509.Certificate, error) {
	if err := is.Usable(now); err != nil {
		return nil, err
	}
	if csr == nil {
		return nil, fmt.Errorf("%w: no CSR", ErrProfile)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: the CSR's signature does not verify: %w", ErrPolicy, err)
	}
	tmpl, err := is.template(csr, p, now)
	if err != nil {
		return nil, err
	}
	if err := is.checkChild(tmpl, csr.PublicKey); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, is.Cert, csr.PublicKey, is.Signer)
	if err != nil {
		return nil, fmt.Errorf("ca: sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse signed certificate: %w", err)
	}
	if err := is.verifyIssued(cert); err != nil {
		return nil, err
	}
	return cert, nil
}

// template turns CSR and profile into the x509.CreateCertificate template.
// Every time is truncated to the second and made UTC first, so the policy
// checks judge exactly what will be encoded.
func (is *Issuer) template(csr *x509.CertificateRequest, p Profile, now time.Time) (*x509.Certificate, error) {
	notBefore, notAfter, err := validityWindow(p, now)
	if err != nil {
		return nil, err
	}
	serial, err := profileSerial(p)
	if err != nil {
		return nil, err
	}
	keyUsage, err := profileKeyUsage(csr, p)
	if err != nil {
		return nil, err
	}

	ski, err := SubjectKeyID(csr.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: CSR key: %w", ErrPolicy, err)
	}
	aki, err := is.keyID()
	if err != nil {
		return nil, err
	}
	sigAlg, err := SignatureAlgorithm(is.Signer.Public())
	if err != nil {
		return nil, err
	}

	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		RawSubject:            csr.RawSubject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		SignatureAlgorithm:    sigAlg,
		BasicConstraintsValid: true,
		IsCA:                  p.IsCA,
		MaxPathLen:            -1,
		KeyUsage:              keyUsage,
		ExtKeyUsage:           slices.Clone(p.ExtKeyUsage),
		SubjectKeyId:          ski,
		// CreateCertificate takes the parent's SKI when it has one; this
		// only matters for a CA certificate without SKI.
		AuthorityKeyId:        aki,
		CRLDistributionPoints: slices.Clone(p.CRLDistributionPoints),
		OCSPServer:            slices.Clone(p.OCSPServers),
		IssuingCertificateURL: slices.Clone(p.IssuingCertificateURLs),
	}
	tmpl.Policies, tmpl.PolicyIdentifiers = inheritedPolicies(is.Cert)
	if p.IsCA {
		setPathLen(tmpl, p, is.Cert)
	}
	if err := setSANs(tmpl, csr, p); err != nil {
		return nil, err
	}
	return tmpl, nil
}

// validityWindow resolves the profile's NotBefore/NotAfter/Validity into
// the UTC, second-truncated times that will be encoded.
func validityWindow(p Profile, now time.Time) (notBefore, notAfter time.Time, err error) {
	notBefore = p.NotBefore
	if notBefore.IsZero() {
		notBefore = now
	}
	notBefore = notBefore.UTC().Truncate(time.Second)
	notAfter = p.NotAfter
	switch {
	case !notAfter.IsZero() && p.Validity != 0:
		return time.Time{}, time.Time{}, fmt.Errorf("%w: both not_after and validity are set", ErrProfile)
	case !notAfter.IsZero():
	case p.Validity > 0:
		notAfter = notBefore.Add(p.Validity)
	case p.Validity < 0:
		return time.Time{}, time.Time{}, fmt.Errorf("%w: validity %s is negative", ErrProfile, p.Validity)
	default:
		return time.Time{}, time.Time{}, fmt.Errorf("%w: neither not_after nor validity is set", ErrProfile)
	}
	return notBefore, notAfter.UTC().Truncate(time.Second), nil
}

// profileSerial returns the profile's serial after checking it, or a fresh
// random one when the profile leaves it to the CA.
func profileSerial(p Profile) (*big.Int, error) {
	if p.Serial == nil {
		return randomSerial()
	}
	if err := checkSerial(p.Serial); err != nil {
		return nil, err
	}
	return p.Serial, nil
}

// profileKeyUsage checks the profile's CA-only fields and returns its key
// usage, defaulting by certificate kind and, for an end entity, by key type
// (an RSA key can also encipher keys).
func profileKeyUsage(csr *x509.CertificateRequest, p Profile) (x509.KeyUsage, error) {
	if p.MaxPathLen != nil && !p.IsCA {
		return 0, fmt.Errorf("%w: max_path_len is only for CA certificates", ErrProfile)
	}
	if p.MaxPathLen != nil && *p.MaxPathLen < 0 {
		return 0, fmt.Errorf("%w: max_path_len %d is negative", ErrProfile, *p.MaxPathLen)
	}
	keyUsage := p.KeyUsage
	switch {
	case keyUsage != 0:
	case p.IsCA:
		keyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	default:
		keyUsage = x509.KeyUsageDigitalSignature
		if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
			keyUsage |= x509.KeyUsageKeyEncipherment
		}
	}
	if !p.IsCA && keyUsage&x509.KeyUsageCertSign != 0 {
		return 0, fmt.Errorf("%w: cert_sign is only for CA certificates", ErrProfile)
	}
	return keyUsage, nil
}

// setPathLen sets a CA certificate's path length: the profile's if given,
// else one below the issuer's so the new CA cannot exceed its parent.
func setPathLen(tmpl *x509.Certificate, p Profile, issuer *x509.Certificate) {
	switch limit, constrained := pathLen(issuer); {
	case p.MaxPathLen != nil:
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = *p.MaxPathLen, *p.MaxPathLen == 0
	case constrained && limit > 0:
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = limit-1, limit-1 == 0
	}
}

// setSANs takes the subject alternative names from the profile if it sets
// any, else from the CSR, and checks them. A bad name is blamed on whoever
// supplied it (ErrProfile or ErrPolicy), and a certificate that would name
// nobody is refused.
func setSANs(tmpl *x509.Certificate, csr *x509.CertificateRequest, p Profile) error {
	override := p.DNSNames != nil || p.IPAddresses != nil || p.EmailAddresses != nil || p.URIs != nil
	if override {
		tmpl.DNSNames = slices.Clone(p.DNSNames)
		tmpl.IPAddresses = slices.Clone(p.IPAddresses)
		tmpl.EmailAddresses = slices.Clone(p.EmailAddresses)
		tmpl.URIs = slices.Clone(p.URIs)
	} else {
		tmpl.DNSNames = csr.DNSNames
		tmpl.IPAddresses = csr.IPAddresses
		tmpl.EmailAddresses = csr.EmailAddresses
		tmpl.URIs = csr.URIs
	}
	if err := checkSANSyntax(tmpl); err != nil {
		if override {
			return fmt.Errorf("%w: %w", ErrProfile, err)
		}
		return fmt.Errorf("%w: CSR: %w", ErrPolicy, err)
	}
	noSANs := len(tmpl.DNSNames)+len(tmpl.IPAddresses)+len(tmpl.EmailAddresses)+len(tmpl.URIs) == 0
	if noSANs && (len(csr.RawSubject) == 0 || bytes.Equal(csr.RawSubject, emptyRDNSequence)) {
		return fmt.Errorf("%w: the certificate would name nobody: empty subject and no subject alternative names", ErrProfile)
	}
	return nil
}

// inheritedPolicies returns the CA's certificate policies for a certificate
// it issues. The protocol's profile has no policies of its own, and a
// certificate issued under a CA's policy says so by asserting its OIDs:
// that keeps a relying party that requires an explicit policy (RFC 5280
// 6.1) able to validate, and the CA/Browser Forum requires the extension in
// both subscriber and subordinate CA certificates. anyPolicy is not passed
// on: in an issued certificate it would claim every policy at once, which
// subscriber certificates must not do.
func inheritedPolicies(ca *x509.Certificate) ([]x509.OID, []asn1.ObjectIdentifier) {
	var oids []x509.OID
	for _, o := range ca.Policies {
		if !o.Equal(oidAnyPolicy) {
			oids = append(oids, o)
		}
	}
	var ids []asn1.ObjectIdentifier
	for _, o := range ca.PolicyIdentifiers {
		if !o.Equal(asn1AnyPolicy) {
			ids = append(ids, o)
		}
	}
	// Both fields, so the policies are written whatever the
	// x509usepolicies GODEBUG setting says (as in MakeProvisioningCert).
	return oids, ids
}

var (
	asn1AnyPolicy = asn1.ObjectIdentifier{2, 5, 29, 32, 0}
	oidAnyPolicy  = mustOID(asn1AnyPolicy)
)

func mustOID(o asn1.ObjectIdentifier) x509.OID {
	oid, err := oidFromASN1(o)
	if err != nil {
		panic(err)
	}
	return oid
}

// emptyRDNSequence is the DER of an empty Name, what a CSR without subject
// carries.
var emptyRDNSequence = []byte{0x30, 0x00}

// checkSerial enforces RFC 5280 4.1.2.2 on serials the PKI chooses: positive
// and at most 20 octets in DER (the sign octet included).
func checkSerial(n *big.Int) error {
	if n.Sign() <= 0 {
		return fmt.Errorf("%w: serial number must be positive", ErrProfile)
	}
	if b := n.Bytes(); len(b) > 20 || len(b) == 20 && b[0]&0x80 != 0 {
		return fmt.Errorf("%w: serial number longer than 20 octets", ErrProfile)
	}
	return nil
}
