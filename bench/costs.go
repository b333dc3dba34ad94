package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/store"
)

// aloneCosts are the steps of a request's way through the token worker measured on
// their own, in the same run and on the same disk: with the timed signing and
// publishing they split the worker's time per request into parts that no stack
// sampler can misjudge (a sampler on a busy machine mostly runs while the worker
// waits, so it overcounts waits and undercounts CPU work).
type aloneCosts struct {
	ReplyCacheMs float64                 `json:"reply_cache_put_ms"`
	VerifyMs     map[hsm.KeyType]float64 `json:"verify_ms"`
	IssueMs      float64                 `json:"issue_certificate_in_go_ms"`
}

// measureReplyCache times store.PutReply of a 1 KiB reply, what the worker does
// for every answer before publishing it.
func measureReplyCache(dir string, n int) (float64, error) {
	st, err := store.Open(dir)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	payload, digest := make([]byte, 1024), make([]byte, 32)
	t0 := time.Now()
	for i := range n {
		if err := st.PutReply(fmt.Sprintf("cost-%d", i), store.Reply{Digest: digest, Payload: payload, Stored: time.Now()}); err != nil {
			return 0, err
		}
	}
	return ms(time.Since(t0)) / float64(n), nil
}

// measureIssue times ca.Issuer.IssueCertificate (CSR check, template, policy
// checks, encoding, parsing and verifying the result through the chain) for the
// appliance's own CA certificate re-signed with a software P-256 key, so that only
// the Go side is measured.
func measureIssue(caPEM, csrPEM string, d time.Duration) (float64, error) {
	certs, err := ca.ParseCertificatesPEM([]byte(caPEM))
	if err != nil || len(certs) == 0 {
		return 0, fmt.Errorf("CA certificate: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return 0, err
	}
	tmpl := certs[0]
	tmpl.SubjectKeyId = nil // computed again for the software key
	tmpl.PublicKey = &key.PublicKey
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return 0, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return 0, err
	}
	csr, err := ca.ParseCSRPEM([]byte(csrPEM))
	if err != nil {
		return 0, err
	}
	ku, err := ca.ParseKeyUsage([]string{"digital_signature"})
	if err != nil {
		return 0, err
	}
	eku, err := ca.ParseExtKeyUsage([]string{"server_auth"})
	if err != nil {
		return 0, err
	}
	is := &ca.Issuer{Cert: cert, Signer: key}
	p := ca.Profile{Validity: 720 * time.Hour, KeyUsage: ku, ExtKeyUsage: eku}
	n := 0
	t0 := time.Now()
	for time.Since(t0) < d {
		if _, err := is.IssueCertificate(csr, p, time.Now()); err != nil {
			return 0, err
		}
		n++
	}
	return ms(time.Since(t0)) / float64(n), nil
}
