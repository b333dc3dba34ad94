package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// ProvisioningOptions describes a lab provisioning certificate.
type ProvisioningOptions struct {
	Subject  pkix.Name
	Validity time.Duration
	// MaxPathLen is the basicConstraints pathLenConstraint; -1 leaves it out
	// (unlimited) and 0 is encoded as an explicit zero.
	MaxPathLen int
	// PermittedDNSDomains, if any, become a critical nameConstraints
	// extension.
	PermittedDNSDomains   []string
	PolicyOIDs            []asn1.ObjectIdentifier
	CRLDistributionPoints []string
}

// MakeProvisioningCert creates a provisioning certificate as the cloud PKI
// would hand it to the appliance, for labs, demos and tests. It is a CA
// certificate (critical basicConstraints, critical keyUsage keyCertSign,
// cRLSign and digitalSignature) valid from a minute ago, to tolerate clock
// skew, for opts.Validity. It is signed by a throwaway P-256 key because the
// appliance only ever uses it as a template; its key and signature are never
// trusted.
func MakeProvisioningCert(opts ProvisioningOptions) ([]byte, error) {
	if len(opts.Subject.ToRDNSequence()) == 0 {
		return nil, errors.New("ca: provisioning certificate needs a subject")
	}
	if opts.Validity <= 0 {
		return nil, fmt.Errorf("ca: provisioning validity %s is not positive", opts.Validity)
	}
	if opts.MaxPathLen < -1 {
		return nil, fmt.Errorf("ca: MaxPathLen %d is invalid, want -1 or more", opts.MaxPathLen)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generate throwaway key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	policies := make([]x509.OID, 0, len(opts.PolicyOIDs))
	for _, p := range opts.PolicyOIDs {
		oid, err := oidFromASN1(p)
		if err != nil {
			return nil, err
		}
		policies = append(policies, oid)
	}

	notBefore := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               opts.Subject,
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(opts.Validity),
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            opts.MaxPathLen,
		MaxPathLenZero:        opts.MaxPathLen == 0,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		PermittedDNSDomains:   opts.PermittedDNSDomains,
		// RFC 5280 4.2.1.10: conforming CAs MUST mark name constraints
		// critical.
		PermittedDNSDomainsCritical: len(opts.PermittedDNSDomains) > 0,
		// Both fields, so the policies are written whatever the
		// x509usepolicies GODEBUG setting says.
		Policies:              policies,
		PolicyIdentifiers:     opts.PolicyOIDs,
		CRLDistributionPoints: opts.CRLDistributionPoints,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca: create provisioning certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}), nil
}

func oidFromASN1(o asn1.ObjectIdentifier) (x509.OID, error) {
	arcs := make([]uint64, len(o))
	for i, a := range o {
		if a < 0 {
			return x509.OID{}, fmt.Errorf("ca: invalid policy OID %s", o)
		}
		arcs[i] = uint64(a)
	}
	oid, err := x509.OIDFromInts(arcs)
	if err != nil {
		return x509.OID{}, fmt.Errorf("ca: invalid policy OID %s: %w", o, err)
	}
	return oid, nil
}
