package ca

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"slices"
	"testing"
	"time"
)

func TestMakeProvisioningCert(t *testing.T) {
	for _, pathLen := range []int{-1, 0, 1, 3} {
		opts := labOptions("IoT HSM Lab Root CA", pathLen)
		before := time.Now()
		data, err := MakeProvisioningCert(opts)
		if err != nil {
			t.Fatalf("pathLen %d: %v", pathLen, err)
		}
		c, err := ParseCertificatePEM(data)
		if err != nil {
			t.Fatalf("pathLen %d: %v", pathLen, err)
		}

		if c.Subject.CommonName != "IoT HSM Lab Root CA" || !slices.Equal(c.Subject.Organization, []string{"IoT HSM Lab"}) || !slices.Equal(c.Subject.Country, []string{"DE"}) {
			t.Errorf("subject %s", c.Subject)
		}
		if !c.BasicConstraintsValid || !c.IsCA {
			t.Errorf("pathLen %d: not a CA", pathLen)
		}
		if c.MaxPathLen != pathLen || c.MaxPathLenZero != (pathLen == 0) {
			t.Errorf("MaxPathLen %d (zero %v), want %d", c.MaxPathLen, c.MaxPathLenZero, pathLen)
		}
		if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature; c.KeyUsage != want {
			t.Errorf("KeyUsage %b, want %b", c.KeyUsage, want)
		}
		for _, oid := range []asn1.ObjectIdentifier{oidExtBasicConstraints, oidExtKeyUsage, {2, 5, 29, 30}} {
			if !criticalExtension(c.Extensions, oid) {
				t.Errorf("extension %s missing or not critical", oid)
			}
		}
		if !slices.Equal(c.PermittedDNSDomains, opts.PermittedDNSDomains) {
			t.Errorf("permitted DNS domains %v", c.PermittedDNSDomains)
		}
		if len(c.PolicyIdentifiers) != 1 || !c.PolicyIdentifiers[0].Equal(labPolicy) {
			t.Errorf("policies %v", c.PolicyIdentifiers)
		}
		if !slices.Equal(c.CRLDistributionPoints, opts.CRLDistributionPoints) {
			t.Errorf("CRL distribution points %v", c.CRLDistributionPoints)
		}
		if got := c.NotAfter.Sub(c.NotBefore); got != opts.Validity {
			t.Errorf("validity %s, want %s", got, opts.Validity)
		}
		// NotBefore is a minute back for clock skew, truncated to seconds.
		if lo, hi := before.Add(-time.Minute-time.Second), time.Now().Add(-time.Minute); c.NotBefore.Before(lo) || c.NotBefore.After(hi) {
			t.Errorf("NotBefore %s not within [%s, %s]", c.NotBefore, lo, hi)
		}
		if err := c.CheckSignatureFrom(c); err != nil {
			t.Errorf("self signature: %v", err)
		}
	}

	minimal, err := MakeProvisioningCert(ProvisioningOptions{Subject: pkix.Name{CommonName: "Bare CA"}, Validity: time.Hour, MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCertificatePEM(minimal)
	if err != nil {
		t.Fatal(err)
	}
	if c.PermittedDNSDomainsCritical || len(c.PermittedDNSDomains) > 0 || len(c.PolicyIdentifiers) > 0 || len(c.CRLDistributionPoints) > 0 {
		t.Error("options not asked for ended up in the certificate")
	}

	for name, opts := range map[string]ProvisioningOptions{
		"no subject":        {Validity: time.Hour, MaxPathLen: -1},
		"no validity":       {Subject: pkix.Name{CommonName: "x"}, MaxPathLen: -1},
		"negative validity": {Subject: pkix.Name{CommonName: "x"}, Validity: -time.Hour, MaxPathLen: -1},
		"path length -2":    {Subject: pkix.Name{CommonName: "x"}, Validity: time.Hour, MaxPathLen: -2},
		"bad policy OID":    {Subject: pkix.Name{CommonName: "x"}, Validity: time.Hour, MaxPathLen: -1, PolicyOIDs: []asn1.ObjectIdentifier{{1, -2}}},
	} {
		if _, err := MakeProvisioningCert(opts); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func criticalExtension(exts []pkix.Extension, oid asn1.ObjectIdentifier) bool {
	for _, e := range exts {
		if e.Id.Equal(oid) {
			return e.Critical
		}
	}
	return false
}

// The zlint check in TestSelfSignRoot is only worth something if zlint
// actually runs its lints here and reports errors through zlintProblems.
func TestZlintHarnessReportsErrors(t *testing.T) {
	root, _ := labRoot(t, "p256", 0, time.Now())
	if problems := zlintProblems(t, root.Raw); len(problems) != 0 {
		t.Fatalf("clean root has zlint errors: %v", problems)
	}

	// A CA whose keyUsage is not critical breaks RFC 5280 4.2.1.3 for CAs
	// and the CA/B Forum root profile.
	key := testKey(t, "p256", 0)
	tmpl := &x509.Certificate{
		SerialNumber:          root.SerialNumber,
		Subject:               root.Subject,
		NotBefore:             root.NotBefore,
		NotAfter:              root.NotAfter,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	kuValue, err := asn1.Marshal(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7})
	if err != nil {
		t.Fatal(err)
	}
	tmpl.ExtraExtensions = []pkix.Extension{{Id: oidExtKeyUsage, Value: kuValue}}
	bad := issue(t, tmpl, tmpl, key, key.Public())
	if problems := zlintProblems(t, bad.Raw); len(problems) == 0 {
		t.Error("zlint found no error in a CA with non-critical keyUsage")
	} else {
		t.Logf("zlint errors on the bad CA, as expected: %v", problems)
	}
}
