package ca

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestIssueTLSServerCertificate(t *testing.T) {
	for _, kind := range []string{"p256", "rsa2048", "p384"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			now := time.Now()
			lab := newLabCA(t, kind, 10, now)

			// The intermediate made by IssueCertificate is itself under
			// test: CA, path length one below the root's, inside it.
			if !lab.interm.IsCA || lab.interm.MaxPathLen != 0 || !lab.interm.MaxPathLenZero {
				t.Errorf("intermediate IsCA %v MaxPathLen %d zero %v, want CA with path length 0",
					lab.interm.IsCA, lab.interm.MaxPathLen, lab.interm.MaxPathLenZero)
			}
			if lab.interm.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
				t.Errorf("intermediate key usage %b", lab.interm.KeyUsage)
			}
			if err := CheckImport(lab.interm, []*x509.Certificate{lab.root}, nil, lab.intermIs.Signer.Public(), now); err != nil {
				t.Errorf("the issued intermediate would not be importable: %v", err)
			}
			if problems := zlintProblems(t, lab.interm.Raw); len(problems) > 0 {
				t.Errorf("zlint errors on the intermediate:\n%s", problems)
			}

			leafKey := testKey(t, "p256", 12)
			if kind == "rsa2048" {
				leafKey = testKey(t, "rsa2048", 12)
			}
			req := newCSR(t, leafKey, "device.iot.example.com", "asked-for.iot.example.com")
			leaf, err := lab.intermIs.IssueCertificate(req, Profile{
				Validity:               90 * 24 * time.Hour,
				ExtKeyUsage:            []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				DNSNames:               []string{"device.iot.example.com", "api.device.iot.example.com"},
				CRLDistributionPoints:  []string{labCRL},
				OCSPServers:            []string{"http://ocsp.iot.example.com"},
				IssuingCertificateURLs: []string{"http://pki.iot.example.com/issuing.crt"},
			}, now)
			if err != nil {
				t.Fatalf("IssueCertificate: %v", err)
			}

			t.Run("go verify", func(t *testing.T) {
				roots, inters := x509.NewCertPool(), x509.NewCertPool()
				roots.AddCert(lab.root)
				inters.AddCert(lab.interm)
				if _, err := leaf.Verify(x509.VerifyOptions{
					Roots:         roots,
					Intermediates: inters,
					DNSName:       "api.device.iot.example.com",
					CurrentTime:   now.Add(time.Hour),
					KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				}); err != nil {
					t.Fatalf("Verify: %v", err)
				}
			})
			t.Run("openssl verify", func(t *testing.T) {
				rootFile := writeFile(t, "root.pem", EncodeCertificatePEM(lab.root))
				intermFile := writeFile(t, "interm.pem", EncodeCertificatePEM(lab.interm))
				leafFile := writeFile(t, "leaf.pem", EncodeCertificatePEM(leaf))
				out := openssl(t, "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", rootFile, "-untrusted", intermFile, leafFile)
				if want := leafFile + ": OK\n"; string(out) != want {
					t.Fatalf("openssl verify printed %q, want %q", out, want)
				}
			})
			t.Run("zlint", func(t *testing.T) {
				if problems := zlintProblems(t, leaf.Raw); len(problems) > 0 {
					t.Errorf("zlint errors:\n%s", problems)
				}
			})
			t.Run("content", func(t *testing.T) {
				if !slices.Equal(leaf.DNSNames, []string{"device.iot.example.com", "api.device.iot.example.com"}) {
					t.Errorf("DNS names %v: the profile's should replace the CSR's", leaf.DNSNames)
				}
				if !bytes.Equal(leaf.RawSubject, req.RawSubject) {
					t.Error("subject is not the CSR's")
				}
				if !bytes.Equal(leaf.RawIssuer, lab.interm.RawSubject) {
					t.Error("issuer is not the CA's subject")
				}
				if !bytes.Equal(leaf.AuthorityKeyId, lab.interm.SubjectKeyId) || len(leaf.AuthorityKeyId) == 0 {
					t.Errorf("AKI %X, want CA SKI %X", leaf.AuthorityKeyId, lab.interm.SubjectKeyId)
				}
				ski, _ := SubjectKeyID(leafKey.Public())
				if !bytes.Equal(leaf.SubjectKeyId, ski) {
					t.Errorf("SKI %X, want %X", leaf.SubjectKeyId, ski)
				}
				intermSKI, _ := SubjectKeyID(lab.intermIs.Signer.Public())
				if !bytes.Equal(lab.interm.SubjectKeyId, intermSKI) || !bytes.Equal(lab.interm.AuthorityKeyId, lab.root.SubjectKeyId) {
					t.Error("intermediate SKI/AKI wrong")
				}
				if leaf.SignatureAlgorithm != wantSigAlg[kind] {
					t.Errorf("signature algorithm %v, want %v", leaf.SignatureAlgorithm, wantSigAlg[kind])
				}
				wantKU := x509.KeyUsageDigitalSignature
				if _, ok := leafKey.Public().(*rsa.PublicKey); ok {
					wantKU |= x509.KeyUsageKeyEncipherment
				}
				if leaf.KeyUsage != wantKU {
					t.Errorf("key usage %b, want %b", leaf.KeyUsage, wantKU)
				}
				if leaf.IsCA || !leaf.BasicConstraintsValid {
					t.Error("leaf should say CA:FALSE")
				}
				if !leaf.NotBefore.Equal(now.UTC().Truncate(time.Second)) || leaf.NotAfter.Sub(leaf.NotBefore) != 90*24*time.Hour {
					t.Errorf("validity %s to %s", leaf.NotBefore, leaf.NotAfter)
				}
				if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
					t.Errorf("serial %X", leaf.SerialNumber)
				}
				if !slices.Equal(leaf.OCSPServer, []string{"http://ocsp.iot.example.com"}) ||
					!slices.Equal(leaf.IssuingCertificateURL, []string{"http://pki.iot.example.com/issuing.crt"}) ||
					!slices.Equal(leaf.CRLDistributionPoints, []string{labCRL}) {
					t.Error("AIA or CRL distribution points missing")
				}
			})
		})
	}
}

func TestIssueCertificateFromCSRNames(t *testing.T) {
	now := time.Now()
	lab := newLabCA(t, "p256", 10, now)
	req := newCSR(t, testKey(t, "p256", 12), "device.iot.example.com", "device.iot.example.com", "other.iot.example.com")
	serial := big.NewInt(0x1234567)
	leaf, err := lab.intermIs.IssueCertificate(req, Profile{
		NotBefore: now.Add(time.Minute),
		NotAfter:  now.Add(24 * time.Hour),
		Serial:    serial,
		KeyUsage:  x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(leaf.DNSNames, req.DNSNames) {
		t.Errorf("DNS names %v, want the CSR's %v", leaf.DNSNames, req.DNSNames)
	}
	if leaf.SerialNumber.Cmp(serial) != 0 || leaf.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyAgreement {
		t.Errorf("serial %X key usage %b: profile not followed", leaf.SerialNumber, leaf.KeyUsage)
	}
	if !leaf.NotBefore.Equal(now.Add(time.Minute).UTC().Truncate(time.Second)) {
		t.Errorf("notBefore %s", leaf.NotBefore)
	}
}

func TestIssueCertificateDenied(t *testing.T) {
	now := time.Now()
	lab := newLabCA(t, "p256", 10, now)
	leafKey := testKey(t, "p256", 12)
	good := newCSR(t, leafKey, "device.iot.example.com", "device.iot.example.com")
	base := Profile{Validity: 24 * time.Hour}
	if _, err := lab.intermIs.IssueCertificate(good, base, now); err != nil {
		t.Fatalf("the request the denials start from is refused: %v", err)
	}

	tampered := append([]byte(nil), good.Raw...)
	tampered[len(tampered)-1] ^= 0x01
	badSig, err := x509.ParseCertificateRequest(tampered)
	if err != nil {
		t.Fatal(err)
	}

	expiredRoot, err := SelfSign(labTemplate(t, "IoT HSM Lab Root CA", 1), lab.rootIs.Signer, now.Add(-20*year))
	if err != nil {
		t.Fatal(err)
	}
	notYetRoot, err := SelfSign(labTemplate(t, "IoT HSM Lab Root CA", 1), lab.rootIs.Signer, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// An intermediate without constraints of its own under the
	// constrained root: only the chain verification can catch a name
	// outside the root's subtree.
	unconstrained := issue(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "Unconstrained Issuing CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(year),
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, lab.root, lab.rootIs.Signer, lab.intermIs.Signer.Public())
	unconstrainedIs := &Issuer{Cert: unconstrained, Chain: []*x509.Certificate{lab.root}, Signer: lab.intermIs.Signer}
	leafAsCA := issue(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "leaf.iot.example.com"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(year),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}, lab.root, lab.rootIs.Signer, lab.intermIs.Signer.Public())

	one, zero := 1, 0
	tests := []struct {
		name string
		is   *Issuer
		csr  *x509.CertificateRequest
		p    Profile
		now  time.Time
	}{
		{"CSR with a bad signature", lab.intermIs, badSig, base, now},
		{"notAfter beyond the CA's", lab.intermIs, good, Profile{NotAfter: lab.interm.NotAfter.Add(time.Second)}, now},
		{"notBefore before the CA's", lab.intermIs, good, Profile{NotBefore: lab.interm.NotBefore.Add(-time.Second), Validity: time.Hour}, now},
		{"empty validity", lab.intermIs, good, Profile{NotBefore: now.Add(time.Hour), NotAfter: now.Add(time.Hour)}, now},
		{"CA under an issuer with path length 0", lab.intermIs, good, Profile{Validity: time.Hour, IsCA: true}, now},
		{"CA with path length 0 under path length 0", lab.intermIs, good, Profile{Validity: time.Hour, IsCA: true, MaxPathLen: &zero}, now},
		{"child path length equal to the issuer's", lab.rootIs, good, Profile{Validity: time.Hour, IsCA: true, MaxPathLen: &one}, now},
		// The root has the constraints (the intermediate, made from a CSR,
		// has none: IssueCertificate does not take extensions from CSRs).
		{"DNS name outside the permitted subtree", lab.rootIs, good, Profile{Validity: time.Hour, DNSNames: []string{"evil.example.org"}}, now},
		{"DNS name outside a higher CA's subtree", unconstrainedIs, good, Profile{Validity: time.Hour, DNSNames: []string{"evil.example.org"}}, now},
		{"CA certificate expired", &Issuer{Cert: expiredRoot, Signer: lab.rootIs.Signer}, good, base, now},
		{"CA certificate not yet valid", &Issuer{Cert: notYetRoot, Signer: lab.rootIs.Signer}, good, base, now},
		{"signer is not the CA certificate's key", &Issuer{Cert: lab.interm, Chain: lab.intermIs.Chain, Signer: lab.rootIs.Signer}, good, base, now},
		{"issuer certificate is not a CA", &Issuer{Cert: leafAsCA, Chain: []*x509.Certificate{lab.root}, Signer: lab.intermIs.Signer}, good, base, now},
		{"no key", &Issuer{Cert: lab.interm}, good, base, now},
		{"RSA subject key below 2048 bits", lab.intermIs, newCSR(t, weakKey(t), "weak.iot.example.com"), base, now},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, err := tt.is.IssueCertificate(tt.csr, tt.p, tt.now)
			wantPolicy(t, cert, err)
		})
	}
}

func TestIssueCertificateProfileErrors(t *testing.T) {
	now := time.Now()
	lab := newLabCA(t, "p256", 10, now)
	csr := newCSR(t, testKey(t, "p256", 12), "device.iot.example.com")
	one, minus := 1, -1
	tests := []struct {
		name string
		p    Profile
	}{
		{"neither notAfter nor validity", Profile{}},
		{"both notAfter and validity", Profile{NotAfter: now.Add(time.Hour), Validity: time.Hour}},
		{"negative validity", Profile{Validity: -time.Hour}},
		{"path length on a leaf", Profile{Validity: time.Hour, MaxPathLen: &one}},
		{"negative path length", Profile{Validity: time.Hour, IsCA: true, MaxPathLen: &minus}},
		{"certSign on a leaf", Profile{Validity: time.Hour, KeyUsage: x509.KeyUsageCertSign}},
		{"zero serial", Profile{Validity: time.Hour, Serial: big.NewInt(0)}},
		{"negative serial", Profile{Validity: time.Hour, Serial: big.NewInt(-5)}},
		{"serial over 20 octets", Profile{Validity: time.Hour, Serial: new(big.Int).Lsh(big.NewInt(1), 160)}},
		{"malformed DNS name", Profile{Validity: time.Hour, DNSNames: []string{"bad name.iot.example.com"}}},
		{"relative URI", Profile{Validity: time.Hour, URIs: []*url.URL{{Path: "relative"}}}},
		{"IP of odd length", Profile{Validity: time.Hour, IPAddresses: []net.IP{{1, 2, 3}}}},
		{"empty subject and SANs overridden to none", Profile{Validity: time.Hour, DNSNames: []string{}}},
	}
	noSubject := newCSRFor(t, testKey(t, "p256", 12), &x509.CertificateRequest{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := csr
			if tt.name == "empty subject and SANs overridden to none" {
				req = noSubject
			}
			cert, err := lab.intermIs.IssueCertificate(req, tt.p, now)
			wantProfile(t, cert, err)
		})
	}
	cert, err := lab.intermIs.IssueCertificate(nil, Profile{Validity: time.Hour}, now)
	wantProfile(t, cert, err)
}

func TestIssueCertificatePathLength(t *testing.T) {
	now := time.Now()
	rootKey := testKey(t, "p256", 30)
	// The lab root has path length 1; this one has 3, so there is room to
	// see the default and an explicit smaller value.
	tmpl := labTemplate(t, "Path Length 3 Root", 3)
	root, err := SelfSign(tmpl, rootKey, now)
	if err != nil {
		t.Fatal(err)
	}
	is := &Issuer{Cert: root, Signer: rootKey}
	csr := newCSR(t, testKey(t, "p256", 31), "Sub CA")

	def, err := is.IssueCertificate(csr, Profile{Validity: year, IsCA: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	if def.MaxPathLen != 2 {
		t.Errorf("default path length %d, want the issuer's 3 minus 1", def.MaxPathLen)
	}
	zero := 0
	explicit, err := is.IssueCertificate(csr, Profile{Validity: year, IsCA: true, MaxPathLen: &zero}, now)
	if err != nil {
		t.Fatal(err)
	}
	if explicit.MaxPathLen != 0 || !explicit.MaxPathLenZero {
		t.Errorf("explicit path length 0 came out as %d (zero %v)", explicit.MaxPathLen, explicit.MaxPathLenZero)
	}

	// No constraint above: none below unless asked for.
	free := selfSigned(t, &x509.Certificate{
		Subject:    pkix.Name{CommonName: "Unconstrained Root"},
		NotBefore:  now.Add(-time.Minute),
		NotAfter:   now.Add(2 * year),
		KeyUsage:   x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		MaxPathLen: -1,
	}, rootKey)
	sub, err := (&Issuer{Cert: free, Signer: rootKey}).IssueCertificate(csr, Profile{Validity: year, IsCA: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	if sub.MaxPathLen != -1 {
		t.Errorf("path length %d under an unconstrained root, want none", sub.MaxPathLen)
	}
}

func TestIssueCertificateNameConstraints(t *testing.T) {
	now := time.Now()
	key := testKey(t, "p256", 32)
	_, permittedIPs, _ := net.ParseCIDR("192.0.2.0/24")
	_, excludedIPs, _ := net.ParseCIDR("192.0.2.128/25")
	root := selfSigned(t, &x509.Certificate{
		Subject:                     pkix.Name{CommonName: "Constrained Root"},
		NotBefore:                   now.Add(-time.Minute),
		NotAfter:                    now.Add(2 * year),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         []string{"iot.example.com"},
		ExcludedDNSDomains:          []string{"secret.iot.example.com"},
		PermittedEmailAddresses:     []string{"iot.example.com", "ops@example.net"},
		ExcludedEmailAddresses:      []string{"root@iot.example.com"},
		PermittedIPRanges:           []*net.IPNet{permittedIPs},
		ExcludedIPRanges:            []*net.IPNet{excludedIPs},
		PermittedURIDomains:         []string{".iot.example.com"},
		ExcludedURIDomains:          []string{"admin.iot.example.com"},
	}, key)
	is := &Issuer{Cert: root, Signer: key}
	csr := newCSR(t, testKey(t, "p256", 33), "device")
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}

	ok := Profile{
		Validity:       time.Hour,
		DNSNames:       []string{"a.iot.example.com", "iot.example.com", "*.devices.iot.example.com"},
		EmailAddresses: []string{"alice@iot.example.com", "ops@example.net"},
		IPAddresses:    []net.IP{net.ParseIP("192.0.2.7")},
		URIs:           []*url.URL{mustURL("spiffe://mesh.iot.example.com/device/1")},
	}
	cert, err := is.IssueCertificate(csr, ok, now)
	if err != nil {
		t.Fatalf("names inside the constraints refused: %v", err)
	}
	opensslVerify(t, root, cert)

	denied := []struct {
		name string
		p    Profile
	}{
		{"excluded DNS", Profile{DNSNames: []string{"x.secret.iot.example.com"}}},
		{"wildcard reaching an excluded name", Profile{DNSNames: []string{"*.iot.example.com"}}},
		{"DNS suffix without label boundary", Profile{DNSNames: []string{"eviliot.example.com"}}},
		{"email in a subdomain of a host constraint", Profile{EmailAddresses: []string{"bob@sub.iot.example.com"}}},
		{"excluded mailbox", Profile{EmailAddresses: []string{"root@iot.example.com"}}},
		{"other mailbox of a mailbox constraint", Profile{EmailAddresses: []string{"dev@example.net"}}},
		{"IP outside", Profile{IPAddresses: []net.IP{net.ParseIP("198.51.100.1")}}},
		{"IP excluded", Profile{IPAddresses: []net.IP{net.ParseIP("192.0.2.200")}}},
		{"IPv6 not permitted", Profile{IPAddresses: []net.IP{net.ParseIP("2001:db8::1")}}},
		{"URI host outside", Profile{URIs: []*url.URL{mustURL("https://example.org/")}}},
		{"URI host equal to a leading-period domain", Profile{URIs: []*url.URL{mustURL("https://iot.example.com/")}}},
		{"URI host excluded", Profile{URIs: []*url.URL{mustURL("https://admin.iot.example.com/")}}},
		{"URN under URI constraints", Profile{URIs: []*url.URL{mustURL("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66")}}},
		{"URI with IP host under URI constraints", Profile{URIs: []*url.URL{mustURL("https://192.0.2.1/")}}},
	}
	for _, tt := range denied {
		t.Run(tt.name, func(t *testing.T) {
			tt.p.Validity = time.Hour
			cert, err := is.IssueCertificate(csr, tt.p, now)
			wantPolicy(t, cert, err)
		})
	}
}

// weakRSAKey is a 1024-bit key, the smallest Go still generates: only the
// policy refusing it is tested.
var weakRSAKey = sync.OnceValues(func() (*rsa.PrivateKey, error) {
	return rsa.GenerateKey(rand.Reader, 1024)
})

func weakKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := weakRSAKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
