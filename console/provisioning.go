package console

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"strconv"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
)

// cmdMakeProvisioningCert makes a lab provisioning certificate, the template a cloud
// PKI would otherwise hand out, so that slot.selfsign and slot.csr can be tried
// without one. It needs no broker.
func (s *session) cmdMakeProvisioningCert(args []string) error {
	fs := s.flags("make-provisioning-cert", "--cn NAME [--org O] [--country C] [--validity D] [--path-len N] [--permitted-dns a,b] [--policy OID,...] [--crl-dp URL,...] [--out FILE]")
	cn := fs.String("cn", "", "subject common name")
	org := fs.String("org", "", "subject organization")
	country := fs.String("country", "", "subject country (two letters)")
	validity := fs.Duration("validity", 87600*time.Hour, "validity of the CA certificates made from it")
	pathLen := fs.Int("path-len", -1, "basicConstraints path length (-1: none)")
	permitted := fs.String("permitted-dns", "", "permitted DNS name constraints, comma-separated")
	policies := fs.String("policy", "", "certificate policy OIDs, comma-separated")
	crlDP := fs.String("crl-dp", "", "CRL distribution point URLs, comma-separated")
	out := fs.String("out", "", "write the PEM to `FILE` instead of stdout")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if *cn == "" {
		return usagef("--cn is required")
	}
	if *validity <= 0 {
		return usagef("--validity must be positive")
	}
	if *pathLen < -1 {
		return usagef("--path-len must be -1 (none) or more")
	}
	opts := ca.ProvisioningOptions{
		Subject:               pkix.Name{CommonName: *cn},
		Validity:              *validity,
		MaxPathLen:            *pathLen,
		PermittedDNSDomains:   splitList(*permitted),
		CRLDistributionPoints: splitList(*crlDP),
	}
	if *org != "" {
		opts.Subject.Organization = []string{*org}
	}
	if *country != "" {
		opts.Subject.Country = []string{*country}
	}
	for _, p := range splitList(*policies) {
		oid, err := parseOID(p)
		if err != nil {
			return usagef("--policy %q is not a dotted OID such as 1.3.6.1.4.1.99999.1", p)
		}
		opts.PolicyOIDs = append(opts.PolicyOIDs, oid)
	}
	pemBytes, err := ca.MakeProvisioningCert(opts)
	if err != nil {
		return err
	}
	// The result is no request's reply; --json has nothing to add to the PEM.
	saved := s.opts.json
	s.opts.json = false
	defer func() { s.opts.json = saved }()
	return s.emit(&requestFlags{out: *out}, artefact{text: string(pemBytes), summary: "provisioning certificate " + certSummary(string(pemBytes))})
}

func parseOID(s string) (asn1.ObjectIdentifier, error) {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return nil, strconv.ErrSyntax
	}
	oid := make(asn1.ObjectIdentifier, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, strconv.ErrSyntax
		}
		oid[i] = n
	}
	return oid, nil
}
