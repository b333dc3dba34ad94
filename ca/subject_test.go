package ca

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// nameAttr is one attribute of a hand-encoded subject, so that tests control
// the string type (Go would encode an emailAddress as UTF8String).
type nameAttr struct {
	oid asn1.ObjectIdentifier
	tag cbasn1.Tag
	val []byte
}

func cnAttr(s string) nameAttr    { return nameAttr{oidCommonName, cbasn1.UTF8String, []byte(s)} }
func emailAttr(s string) nameAttr { return nameAttr{oidEmailAddress, cbasn1.IA5String, []byte(s)} }

// bmpCN is a commonName as BMPString, which encoding/asn1 cannot decode.
func bmpCN(s string) nameAttr {
	var v []byte
	for _, r := range s {
		v = append(v, byte(r>>8), byte(r))
	}
	return nameAttr{oidCommonName, cbasn1.Tag(asn1.TagBMPString), v}
}

// rawName encodes a Name with one attribute per RDN.
func rawName(t *testing.T, attrs ...nameAttr) []byte {
	t.Helper()
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, a := range attrs {
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(a.oid)
					b.AddASN1(a.tag, func(b *cryptobyte.Builder) { b.AddBytes(a.val) })
				})
			})
		}
	})
	der, err := b.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// subjectConstrainedRoot is a root constrained the way the appliance's
// users constrain device CAs: DNS names under iot.example.com and mail
// addresses on hosts below example.com, with exclusions in both.
func subjectConstrainedRoot(t *testing.T, now time.Time) *Issuer {
	t.Helper()
	key := testKey(t, "p256", 120)
	root := selfSigned(t, &x509.Certificate{
		Subject:                     pkix.Name{CommonName: "Subject Constrained Root"},
		NotBefore:                   now.Add(-time.Minute),
		NotAfter:                    now.Add(2 * year),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         []string{"iot.example.com"},
		ExcludedDNSDomains:          []string{"secret.iot.example.com"},
		PermittedEmailAddresses:     []string{".example.com"},
		ExcludedEmailAddresses:      []string{".secret.example.com", "root@x.example.com"},
	}, key)
	return &Issuer{Cert: root, Signer: key}
}

// opensslVerifyResult verifies cert against root (and interm, if any) with
// OpenSSL and returns whether it passed and what it printed.
func opensslVerifyResult(t *testing.T, root, interm, cert *x509.Certificate) (string, bool) {
	t.Helper()
	args := []string{"verify", "-x509_strict", "-CAfile", writeFile(t, "root.pem", EncodeCertificatePEM(root))}
	if interm != nil {
		args = append(args, "-untrusted", writeFile(t, "interm.pem", EncodeCertificatePEM(interm)))
	}
	out, err := opensslResult(t, append(args, writeFile(t, "cert.pem", EncodeCertificatePEM(cert)))...)
	return string(out), err == nil
}

func TestSubjectNameConstraints(t *testing.T) {
	now := time.Now()
	is := subjectConstrainedRoot(t, now)
	leafKey := testKey(t, "p256", 121)
	throwaway := testKey(t, "p256", 122)
	ski, err := SubjectKeyID(leafKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := func(raw []byte, dns []string) *x509.Certificate {
		return &x509.Certificate{
			RawSubject:            raw,
			DNSNames:              dns,
			NotBefore:             now.Truncate(time.Second),
			NotAfter:              now.Add(time.Hour),
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageDigitalSignature,
			SubjectKeyId:          ski,
		}
	}

	tests := []struct {
		name    string
		subject []nameAttr
		dns     []string
		ok      bool
		// openssl is what `openssl verify` says about the same certificate
		// signed without the appliance; empty where the appliance is
		// deliberately stricter.
		openssl string
	}{
		{"host-like CN outside the DNS constraint", []nameAttr{cnAttr("www.bank.com")}, nil, false, "permitted subtree violation"},
		{"host-like CN inside the DNS constraint", []nameAttr{cnAttr("dev1.iot.example.com")}, nil, true, ""},
		{"CN that is not host-like", []nameAttr{cnAttr("Device 42")}, nil, true, ""},
		{"single-label CN", []nameAttr{cnAttr("sensor7")}, nil, true, ""},
		{"host-like CN in the excluded subtree", []nameAttr{cnAttr("x.secret.iot.example.com")}, nil, false, "excluded subtree violation"},
		{"IP address as CN", []nameAttr{cnAttr("192.0.2.1")}, nil, false, "permitted subtree violation"},
		{"second CN host-like", []nameAttr{cnAttr("Device 42"), cnAttr("www.bank.com")}, nil, false, "permitted subtree violation"},
		{"CN as BMPString", []nameAttr{bmpCN("www.bank.com")}, nil, false, "permitted subtree violation"},
		{"CN with trailing dot and upper case", []nameAttr{cnAttr("WWW.BANK.COM.")}, nil, false, ""},
		{"wildcard CN reaching the excluded subtree", []nameAttr{cnAttr("*.iot.example.com")}, nil, false, ""},
		{"CN with a NUL", []nameAttr{cnAttr("dev1.iot.example.com\x00.bank.com")}, nil, false, "unsupported or invalid name syntax"},
		{"DNS SAN present: the CN is not a DNS name", []nameAttr{cnAttr("www.bank.com")}, []string{"dev1.iot.example.com"}, true, ""},
		{"emailAddress outside the email constraint", []nameAttr{cnAttr("Device 42"), emailAttr("ceo@bank.com")}, nil, false, "permitted subtree violation"},
		{"emailAddress inside the email constraint", []nameAttr{cnAttr("Device 42"), emailAttr("a@x.example.com")}, nil, true, ""},
		{"emailAddress on a host excluded", []nameAttr{emailAttr("a@mail.secret.example.com")}, nil, false, "excluded subtree violation"},
		{"emailAddress mailbox excluded", []nameAttr{emailAttr("root@x.example.com")}, nil, false, "excluded subtree violation"},
		{"emailAddress with a DNS SAN", []nameAttr{emailAttr("ceo@bank.com")}, []string{"dev1.iot.example.com"}, false, "permitted subtree violation"},
		{"emailAddress as UTF8String", []nameAttr{{oidEmailAddress, cbasn1.UTF8String, []byte("a@x.example.com")}}, nil, false, "unsupported or invalid name syntax"},
		{"emailAddress without a mailbox", []nameAttr{emailAttr("nobody")}, nil, false, "unsupported or invalid name syntax"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := rawName(t, tt.subject...)
			csr := newCSRFor(t, leafKey, &x509.CertificateRequest{RawSubject: raw})
			fromCSR, errCSR := is.IssueCertificate(csr, Profile{Validity: time.Hour, DNSNames: tt.dns}, now)
			tbs := pkiTBS(t, is.Cert, throwaway, leafTmpl(raw, tt.dns), leafKey.Public())
			fromTBS, errTBS := is.SignTBS(tbs, now)
			if !tt.ok {
				wantPolicy(t, fromCSR, errCSR)
				wantPolicy(t, fromTBS, errTBS)
				if tt.openssl == "" {
					return
				}
				// The same certificate signed without the policy: OpenSSL
				// refuses it for the same reason.
				forged := issue(t, leafTmpl(raw, tt.dns), is.Cert, is.Signer, leafKey.Public())
				out, ok := opensslVerifyResult(t, is.Cert, nil, forged)
				if ok || !strings.Contains(out, tt.openssl) {
					t.Errorf("openssl verify of the certificate the appliance refused: ok %v, want %q in\n%s", ok, tt.openssl, out)
				}
				return
			}
			if errCSR != nil {
				t.Fatalf("IssueCertificate: %v", errCSR)
			}
			if errTBS != nil {
				t.Fatalf("SignTBS: %v", errTBS)
			}
			for _, c := range []*x509.Certificate{fromCSR, fromTBS} {
				if out, ok := opensslVerifyResult(t, is.Cert, nil, c); !ok {
					t.Errorf("openssl refuses a certificate the appliance issued:\n%s", out)
				}
			}
		})
	}
}

// A constraint on a CA above the issuing one binds the subject too: Go's
// verifier, run after signing, does not look at the subject.
func TestSubjectNameConstraintsFromAbove(t *testing.T) {
	now := time.Now()
	root := subjectConstrainedRoot(t, now)
	intermKey := testKey(t, "p256", 123)
	interm, err := root.IssueCertificate(newCSR(t, intermKey, "Unconstrained Issuing CA"), Profile{IsCA: true, Validity: year}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(interm.PermittedDNSDomains)+len(interm.PermittedEmailAddresses) != 0 {
		t.Fatal("the intermediate is constrained itself")
	}
	is := &Issuer{Cert: interm, Chain: []*x509.Certificate{root.Cert}, Signer: intermKey}
	leafKey := testKey(t, "p256", 124)
	for _, subject := range [][]nameAttr{{cnAttr("www.bank.com")}, {emailAttr("ceo@bank.com")}} {
		csr := newCSRFor(t, leafKey, &x509.CertificateRequest{RawSubject: rawName(t, subject...)})
		cert, err := is.IssueCertificate(csr, Profile{Validity: time.Hour}, now)
		wantPolicy(t, cert, err)
	}
	csr := newCSRFor(t, leafKey, &x509.CertificateRequest{RawSubject: rawName(t, cnAttr("dev1.iot.example.com"), emailAttr("a@x.example.com"))})
	cert, err := is.IssueCertificate(csr, Profile{Validity: time.Hour}, now)
	if err != nil {
		t.Fatalf("names inside the root's constraints refused: %v", err)
	}
	if out, ok := opensslVerifyResult(t, root.Cert, interm, cert); !ok {
		t.Errorf("openssl refuses the issued certificate:\n%s", out)
	}
}

func TestHostLikeCN(t *testing.T) {
	tests := []struct {
		cn   string
		want string // "" for not host-like
	}{
		{"www.bank.com", "www.bank.com"},
		{"WWW.Bank.com.", "WWW.Bank.com"},
		{"dev_1.iot.example.com", "dev_1.iot.example.com"},
		{"*.iot.example.com", "*.iot.example.com"},
		{"*.com", "*.com"},
		{"192.0.2.1", "192.0.2.1"},
		{"Device 42", ""},
		{"sensor7", ""},
		{"localhost", ""},
		{"*", ""},
		{"a.*.example.com", ""},
		{".example.com", ""},
		{"a..example.com", ""},
		{"-a.example.com", ""},
		{"a-.example.com", ""},
		{"bücher.example", ""},
		{"ceo@bank.com", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, ok := hostLikeCN(tt.cn)
		if ok != (tt.want != "") || got != tt.want {
			t.Errorf("hostLikeCN(%q) = %q, %v; want %q", tt.cn, got, ok, tt.want)
		}
	}
}
