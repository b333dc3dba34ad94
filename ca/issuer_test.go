package ca

import (
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestUsable(t *testing.T) {
	now := time.Now()
	lab := newLabCA(t, "p256", 90, now)
	if err := lab.intermIs.Usable(now); err != nil {
		t.Fatalf("Usable: %v", err)
	}
	if err := lab.intermIs.Usable(lab.interm.NotAfter); err != nil {
		t.Errorf("Usable at the last valid second: %v", err)
	}
	tests := []struct {
		name string
		is   *Issuer
		at   time.Time
	}{
		{"nil issuer", nil, now},
		{"no certificate", &Issuer{Signer: lab.intermIs.Signer}, now},
		{"no key", &Issuer{Cert: lab.interm}, now},
		{"expired", lab.intermIs, lab.interm.NotAfter.Add(time.Second)},
		{"not yet valid", lab.intermIs, lab.interm.NotBefore.Add(-time.Second)},
		{"other key", &Issuer{Cert: lab.interm, Signer: lab.rootIs.Signer}, now},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantPolicy(t, []byte(nil), tt.is.Usable(tt.at))
		})
	}
}

// An issuer whose chain stops below the root (the PKI did not send it) is
// verified up to the last certificate it has.
func TestIssuerPartialChain(t *testing.T) {
	now := time.Now()
	lab := newLabCA(t, "p256", 90, now)
	csr := newCSR(t, testKey(t, "p256", 92), "p.iot.example.com", "p.iot.example.com")
	is := &Issuer{Cert: lab.interm, Signer: lab.intermIs.Signer}
	cert, err := is.IssueCertificate(csr, Profile{Validity: time.Hour}, now)
	if err != nil {
		t.Fatalf("IssueCertificate without chain: %v", err)
	}
	caFile := writeFile(t, "ca.pem", EncodeCertificatePEM(lab.interm))
	certFile := writeFile(t, "cert.pem", EncodeCertificatePEM(cert))
	out := openssl(t, "verify", "-x509_strict", "-partial_chain", "-CAfile", caFile, certFile)
	if want := certFile + ": OK\n"; string(out) != want {
		t.Fatalf("openssl verify printed %q, want %q", out, want)
	}
}

// Signing methods are safe to call concurrently on one Issuer (run with
// -race).
func TestIssuerConcurrent(t *testing.T) {
	now := time.Now()
	lab := newLabCA(t, "p256", 90, now)
	csr := newCSR(t, testKey(t, "p256", 92), "c.iot.example.com", "c.iot.example.com")
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 8 {
		wg.Go(func() {
			if _, err := lab.intermIs.IssueCertificate(csr, Profile{Validity: time.Hour}, now); err != nil {
				errs <- fmt.Errorf("certificate %d: %w", i, err)
			}
			if _, err := lab.intermIs.SignCMS([]byte("x"), i%2 == 0, now); err != nil {
				errs <- fmt.Errorf("CMS %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if lab.intermIs.Cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Error("the Issuer's certificate was modified")
	}
}
