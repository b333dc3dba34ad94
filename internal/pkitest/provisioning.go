package pkitest

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
)

// LabPolicy is the certificate policy of the tests' provisioning certificates.
var LabPolicy = asn1.ObjectIdentifier{2, 999, 7}

// ProvisioningCert is what a PKI hands an empty CA slot: a provisioning certificate
// with cn as the subject, the path length given, names constrained to example.com
// (the tests' leaves are under it), a policy and a CRL distribution point, as a
// real PKI's would carry.
func ProvisioningCert(t testing.TB, cn string, pathLen int) []byte {
	t.Helper()
	p, err := ca.MakeProvisioningCert(ca.ProvisioningOptions{
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"iot-hsm test PKI"}, Country: []string{"DE"}},
		Validity:              5 * 365 * 24 * time.Hour,
		MaxPathLen:            pathLen,
		PermittedDNSDomains:   []string{"example.com"},
		PolicyOIDs:            []asn1.ObjectIdentifier{LabPolicy},
		CRLDistributionPoints: []string{"http://pki.example.com/ca.crl"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
