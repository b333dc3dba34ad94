package ca

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net"
	"net/url"
	"testing"
)

func TestDNSConstraintMatching(t *testing.T) {
	tests := []struct {
		name, constraint string
		within, reaches  bool
	}{
		{"example.com", "example.com", true, true},
		{"EXAMPLE.com", "example.COM", true, true},
		{"a.example.com", "example.com", true, true},
		{"a.b.example.com", "example.com", true, true},
		{"badexample.com", "example.com", false, false},
		{"example.com", ".example.com", false, false},
		{"a.example.com", ".example.com", true, true},
		{"example.org", "example.com", false, false},
		{"anything", "", true, true},
		{"*.example.com", "example.com", true, true},
		{"*.example.com", "a.example.com", false, true},    // the wildcard stands for a.example.com
		{"*.example.com", "b.a.example.com", false, false}, // one label only
		{"*.example.com", ".a.example.com", false, false},
		{"*.a.example.com", "example.com", true, true},
		{"*.example.com", "com", true, true},
	}
	for _, tt := range tests {
		if got := dnsWithin(tt.name, tt.constraint); got != tt.within {
			t.Errorf("dnsWithin(%q, %q) = %v", tt.name, tt.constraint, got)
		}
		if got := dnsReaches(tt.name, tt.constraint); got != tt.reaches {
			t.Errorf("dnsReaches(%q, %q) = %v", tt.name, tt.constraint, got)
		}
	}
}

func TestEmailConstraintMatching(t *testing.T) {
	tests := []struct {
		addr, constraint string
		want             bool
	}{
		{"alice@example.com", "example.com", true},
		{"alice@EXAMPLE.com", "example.com", true},
		{"alice@mail.example.com", "example.com", false},
		{"alice@mail.example.com", ".example.com", true},
		{"alice@example.com", ".example.com", false},
		{"alice@example.com", "alice@example.com", true},
		{"alice@Example.com", "alice@example.com", true},
		{"Alice@example.com", "alice@example.com", false},
		{"bob@example.com", "alice@example.com", false},
		{"no-at-sign", "example.com", false},
		{"x@y", "", true},
	}
	for _, tt := range tests {
		if got := emailWithin(tt.addr, tt.constraint); got != tt.want {
			t.Errorf("emailWithin(%q, %q) = %v", tt.addr, tt.constraint, got)
		}
	}
}

func TestIPAndURIConstraintMatching(t *testing.T) {
	_, v4, _ := net.ParseCIDR("10.1.0.0/16")
	_, v6, _ := net.ParseCIDR("2001:db8::/32")
	ips := []struct {
		ip   string
		n    *net.IPNet
		want bool
	}{
		{"10.1.2.3", v4, true},
		{"10.2.0.1", v4, false},
		{"2001:db8::1", v6, true},
		{"2001:db9::1", v6, false},
		{"10.1.2.3", v6, false},
		{"2001:db8::1", v4, false},
	}
	for _, tt := range ips {
		if got := ipWithin(net.ParseIP(tt.ip), tt.n); got != tt.want {
			t.Errorf("ipWithin(%s, %s) = %v", tt.ip, tt.n, got)
		}
	}
	// The 4-byte form parsed certificates carry.
	if !ipWithin(net.IP{10, 1, 0, 9}, v4) {
		t.Error("4-byte IPv4 not matched")
	}

	uris := []struct {
		uri, constraint string
		want            bool
	}{
		{"https://host.example.com/x", "host.example.com", true},
		{"https://HOST.example.com:8443/x", "host.example.com", true},
		{"https://sub.host.example.com/", "host.example.com", false},
		{"https://sub.host.example.com/", ".host.example.com", true},
		{"https://host.example.com/", ".host.example.com", false},
		{"spiffe://trust.example.com/w", ".example.com", true},
		{"urn:uuid:1", ".example.com", false},
		{"https://10.0.0.1/", ".example.com", false},
		{"https://[2001:db8::1]/", "", true},
	}
	for _, tt := range uris {
		u, err := url.Parse(tt.uri)
		if err != nil {
			t.Fatal(err)
		}
		if got := uriWithin(u, tt.constraint); got != tt.want {
			t.Errorf("uriWithin(%q, %q) = %v", tt.uri, tt.constraint, got)
		}
	}
}

func TestSANSyntax(t *testing.T) {
	good := []string{"a.example.com", "*.example.com", "xn--bcher-kva.example", "localhost", "a-b.c0"}
	bad := []string{"", ".example.com", "example.com.", "a..b", "-a.b", "a-.b", "a b.c", "a_b.c", "*.*.example.com",
		"a.*.example.com", "*", "ex\u00e4mple.com"}
	for _, n := range good {
		if err := checkSANSyntax(&x509.Certificate{DNSNames: []string{n}}); err != nil {
			t.Errorf("%q refused: %v", n, err)
		}
	}
	for _, n := range bad {
		if err := checkSANSyntax(&x509.Certificate{DNSNames: []string{n}}); err == nil {
			t.Errorf("%q accepted", n)
		}
	}
	for _, e := range []string{"@example.com", "a b@example.com", "alice@", "alice@bad_host", "alice"} {
		if err := checkSANSyntax(&x509.Certificate{EmailAddresses: []string{e}}); err == nil {
			t.Errorf("email %q accepted", e)
		}
	}
	if err := checkSANSyntax(&x509.Certificate{EmailAddresses: []string{"alice+tag@mail.example.com"}}); err != nil {
		t.Error(err)
	}
}

func TestSameSignatureAlgorithm(t *testing.T) {
	withNull, _, err := signatureAlgorithmID(x509.SHA256WithRSA)
	if err != nil {
		t.Fatal(err)
	}
	bare, _ := asn1.Marshal(pkix.AlgorithmIdentifier{Algorithm: oidSHA256WithRSA})
	if !sameSignatureAlgorithm(withNull, withNull, x509.SHA256WithRSA) || !sameSignatureAlgorithm(bare, withNull, x509.SHA256WithRSA) {
		t.Error("RSA with NULL or absent parameters refused")
	}
	ec, _, err := signatureAlgorithmID(x509.ECDSAWithSHA256)
	if err != nil {
		t.Fatal(err)
	}
	ecNull, _ := asn1.Marshal(pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA256, Parameters: asn1.NullRawValue})
	if sameSignatureAlgorithm(ecNull, ec, x509.ECDSAWithSHA256) {
		t.Error("ECDSA with NULL parameters accepted (RFC 5758: absent)")
	}
	ec384, _, _ := signatureAlgorithmID(x509.ECDSAWithSHA384)
	if sameSignatureAlgorithm(ec384, ec, x509.ECDSAWithSHA256) || sameSignatureAlgorithm(withNull, ec, x509.ECDSAWithSHA256) {
		t.Error("another algorithm accepted")
	}
	if _, _, err := signatureAlgorithmID(x509.SHA1WithRSA); err == nil {
		t.Error("SHA1WithRSA has an identifier")
	}
}
