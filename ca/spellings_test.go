package ca

import (
	"crypto/x509"
	"errors"
	"slices"
	"testing"
)

func TestParseKeyUsage(t *testing.T) {
	all := []string{"digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "cert_sign", "crl_sign"}
	want := []x509.KeyUsage{x509.KeyUsageDigitalSignature, x509.KeyUsageContentCommitment, x509.KeyUsageKeyEncipherment,
		x509.KeyUsageDataEncipherment, x509.KeyUsageKeyAgreement, x509.KeyUsageCertSign, x509.KeyUsageCRLSign}
	var sum x509.KeyUsage
	for i, n := range all {
		got, err := ParseKeyUsage([]string{n})
		if err != nil || got != want[i] {
			t.Errorf("ParseKeyUsage(%q) = %b, %v; want %b", n, got, err, want[i])
		}
		sum |= want[i]
	}
	if got, err := ParseKeyUsage(append(all, "cert_sign")); err != nil || got != sum {
		t.Errorf("all names: %b, %v; want %b", got, err, sum)
	}
	if got, err := ParseKeyUsage(nil); err != nil || got != 0 {
		t.Errorf("no names: %b, %v", got, err)
	}
	for _, bad := range []string{"digitalSignature", "Digital_Signature", "encipher_only", "", "cert_sign "} {
		if _, err := ParseKeyUsage([]string{"crl_sign", bad}); !errors.Is(err, ErrProfile) {
			t.Errorf("ParseKeyUsage(%q) err = %v, want ErrProfile", bad, err)
		}
	}
}

func TestParseExtKeyUsage(t *testing.T) {
	all := []string{"server_auth", "client_auth", "code_signing", "email_protection", "time_stamping", "ocsp_signing", "any"}
	want := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageCodeSigning,
		x509.ExtKeyUsageEmailProtection, x509.ExtKeyUsageTimeStamping, x509.ExtKeyUsageOCSPSigning, x509.ExtKeyUsageAny}
	got, err := ParseExtKeyUsage(append(all, "server_auth"))
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseExtKeyUsage = %v, %v; want %v (in order, no repeats)", got, err, want)
	}
	for _, bad := range []string{"serverAuth", "ipsec_user", "", "SERVER_AUTH"} {
		if got, err := ParseExtKeyUsage([]string{"client_auth", bad}); !errors.Is(err, ErrProfile) || got != nil {
			t.Errorf("ParseExtKeyUsage(%q) = %v, %v; want ErrProfile", bad, got, err)
		}
	}
}

func TestParseReason(t *testing.T) {
	want := map[string]int{
		"": -1, "unspecified": 0, "key_compromise": 1, "ca_compromise": 2, "affiliation_changed": 3,
		"superseded": 4, "cessation_of_operation": 5, "certificate_hold": 6, "remove_from_crl": 8,
		"privilege_withdrawn": 9, "aa_compromise": 10,
	}
	for name, code := range want {
		if got, err := ParseReason(name); err != nil || got != code {
			t.Errorf("ParseReason(%q) = %d, %v; want %d", name, got, err, code)
		}
		if !validReason(code) {
			t.Errorf("validReason(%d) is false", code)
		}
	}
	for _, bad := range []string{"keyCompromise", "Key_Compromise", "7", "unused", " superseded"} {
		if _, err := ParseReason(bad); !errors.Is(err, ErrProfile) {
			t.Errorf("ParseReason(%q) err = %v, want ErrProfile", bad, err)
		}
	}
	for _, code := range []int{-2, 7, 11} {
		if validReason(code) {
			t.Errorf("validReason(%d) is true", code)
		}
	}
}
