package ca

import (
	"bytes"
	"crypto"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"os"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

func TestSignOCSPSingle(t *testing.T) {
	for _, kind := range []string{"p256", "rsa2048"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			now := time.Now()
			lab := newLabCA(t, kind, 70, now)
			leaf, err := lab.intermIs.IssueCertificate(newCSR(t, testKey(t, "p256", 72), "d.iot.example.com", "d.iot.example.com"),
				Profile{Validity: 30 * 24 * time.Hour}, now)
			if err != nil {
				t.Fatal(err)
			}
			revokedAt := now.Add(-time.Hour)
			this, next := now, now.Add(24*time.Hour)
			der, err := lab.intermIs.SignOCSP([]OCSPEntry{{Serial: leaf.SerialNumber, Status: "revoked", RevokedAt: revokedAt, Reason: 1}},
				this, next, nil, now)
			if err != nil {
				t.Fatalf("SignOCSP: %v", err)
			}
			// ParseResponseForCert checks the signature against the
			// issuer when the response embeds no certificate.
			resp, err := ocsp.ParseResponseForCert(der, leaf, lab.interm)
			if err != nil {
				t.Fatalf("ParseResponseForCert: %v", err)
			}
			if err := resp.CheckSignatureFrom(lab.interm); err != nil {
				t.Errorf("CheckSignatureFrom: %v", err)
			}
			if resp.Status != ocsp.Revoked || resp.RevocationReason != ocsp.KeyCompromise ||
				!resp.RevokedAt.Equal(revokedAt.Truncate(time.Second)) {
				t.Errorf("status %d reason %d revoked at %s", resp.Status, resp.RevocationReason, resp.RevokedAt)
			}
			if resp.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
				t.Errorf("serial %X", resp.SerialNumber)
			}
			if !resp.ThisUpdate.Equal(this.Truncate(time.Second)) || !resp.NextUpdate.Equal(next.Truncate(time.Second)) ||
				!resp.ProducedAt.Equal(now.Truncate(time.Second)) {
				t.Errorf("thisUpdate %s nextUpdate %s producedAt %s", resp.ThisUpdate, resp.NextUpdate, resp.ProducedAt)
			}
			if !bytes.Equal(resp.ResponderKeyHash, lab.interm.SubjectKeyId) || resp.RawResponderName != nil {
				t.Errorf("responder ID: key hash %X name %X, want key hash %X", resp.ResponderKeyHash, resp.RawResponderName, lab.interm.SubjectKeyId)
			}
			if resp.Certificate != nil {
				t.Error("the CA certificate is embedded")
			}
			if resp.IssuerHash != crypto.SHA1 {
				t.Errorf("CertID hash %v, want SHA-1", resp.IssuerHash)
			}
			if _, err := ocsp.ParseResponse(der, lab.root); err == nil {
				t.Error("the response verifies against a CA that did not sign it")
			}

			// The CertID must be the one a client computes for the leaf.
			reqDER, err := ocsp.CreateRequest(leaf, lab.interm, nil)
			if err != nil {
				t.Fatal(err)
			}
			req, err := ocsp.ParseRequest(reqDER)
			if err != nil {
				t.Fatal(err)
			}
			if got := parseCertIDs(t, der); len(got) != 1 ||
				!bytes.Equal(got[0].NameHash, req.IssuerNameHash) || !bytes.Equal(got[0].IssuerKeyHash, req.IssuerKeyHash) {
				t.Errorf("CertID %+v does not match the client's request %X/%X", got, req.IssuerNameHash, req.IssuerKeyHash)
			}
		})
	}
}

func TestSignOCSPMultiWithOpenSSL(t *testing.T) {
	for _, kind := range []string{"p384", "rsa2048"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			now := time.Now()
			lab := newLabCA(t, kind, 74, now)
			rootFile := writeFile(t, "root.pem", EncodeCertificatePEM(lab.root))
			caFile := writeFile(t, "ca.pem", EncodeCertificatePEM(lab.interm))
			serials := []*big.Int{big.NewInt(0x0a01), big.NewInt(0x0a02), big.NewInt(0x0a03)}

			// openssl builds the request and its nonce, as a client would.
			reqFile := writeFile(t, "req.der", nil)
			args := []string{"ocsp", "-issuer", caFile, "-reqout", reqFile}
			for _, s := range serials {
				args = append(args, "-serial", fmt.Sprintf("0x%X", s))
			}
			opensslOK(t, args...)
			reqDER, err := os.ReadFile(reqFile)
			if err != nil {
				t.Fatal(err)
			}
			nonce := requestNonce(t, reqDER)
			reqIDs := requestCertIDs(t, reqDER)

			revokedAt := now.Add(-2 * time.Hour)
			entries := []OCSPEntry{
				{Serial: serials[0], Status: "good", Reason: -1},
				{Serial: serials[1], Status: "revoked", RevokedAt: revokedAt, Reason: 4},
				{Serial: serials[2], Status: "unknown"},
			}
			der, err := lab.intermIs.SignOCSP(entries, now, now.Add(time.Hour), nonce, now)
			if err != nil {
				t.Fatalf("SignOCSP: %v", err)
			}
			respFile := writeFile(t, "resp.der", der)
			got := parseCertIDs(t, der)
			if len(got) != 3 || len(reqIDs) != 3 {
				t.Fatalf("%d single responses for %d requested", len(got), len(reqIDs))
			}
			for i := range got {
				if !bytes.Equal(got[i].Raw, reqIDs[i].Raw) {
					t.Errorf("CertID %d is\n%X\nthe request's is\n%X", i, got[i].Raw, reqIDs[i].Raw)
				}
			}

			// The whole response: signature by the CA (found through
			// -verify_other, chained to the root) and the request's nonce.
			out := opensslOK(t, "ocsp", "-reqin", reqFile, "-respin", respFile, "-CAfile", rootFile,
				"-verify_other", caFile, "-resp_text")
			containsAll(t, out, "Response verify OK", "OCSP Nonce", fmt.Sprintf("%X", nonce),
				"Responder Id: "+fmt.Sprintf("%X", lab.interm.SubjectKeyId))
			if bytes.Contains(out, []byte("WARNING")) {
				t.Errorf("openssl warns:\n%s", out)
			}

			// Per-certificate status: openssl looks each CertID up by the
			// hashes it computes from -issuer itself.
			args = []string{"ocsp", "-issuer", caFile, "-respin", respFile, "-CAfile", rootFile, "-verify_other", caFile, "-no_nonce"}
			for _, s := range serials {
				args = append(args, "-serial", fmt.Sprintf("0x%X", s))
			}
			out = opensslOK(t, args...)
			containsAll(t, out, "Response verify OK",
				fmt.Sprintf("0x%X: good", serials[0]),
				fmt.Sprintf("0x%X: revoked", serials[1]), "Reason: superseded",
				fmt.Sprintf("0x%X: unknown", serials[2]))

			// Another nonce than the request's must be noticed.
			other, err := lab.intermIs.SignOCSP(entries, now, now.Add(time.Hour), []byte("another nonce"), now)
			if err != nil {
				t.Fatal(err)
			}
			otherFile := writeFile(t, "other.der", other)
			if out, err := opensslResult(t, "ocsp", "-reqin", reqFile, "-respin", otherFile, "-CAfile", rootFile, "-verify_other", caFile); err == nil {
				t.Errorf("openssl accepted a response with another nonce:\n%s", out)
			}
			// A responder openssl cannot tie to the CertIDs' issuer must
			// fail too, or the checks above prove little.
			rootResp, err := lab.rootIs.SignOCSP(entries, now, now.Add(time.Hour), nonce, now)
			if err != nil {
				t.Fatal(err)
			}
			rootRespFile := writeFile(t, "rootresp.der", rootResp)
			if out, err := opensslResult(t, "ocsp", "-reqin", reqFile, "-respin", rootRespFile, "-CAfile", rootFile, "-verify_other", caFile); err == nil {
				t.Errorf("openssl accepted the root answering for the intermediate's certificates:\n%s", out)
			}
		})
	}
}

func TestSignOCSPRefused(t *testing.T) {
	now := time.Now()
	lab := newLabCA(t, "p256", 70, now)
	good := []OCSPEntry{{Serial: big.NewInt(1), Status: "good", Reason: -1}}
	next := now.Add(time.Hour)
	if _, err := lab.intermIs.SignOCSP(good, now, next, nil, now); err != nil {
		t.Fatalf("the request the refusals start from fails: %v", err)
	}

	t.Run("nextUpdate beyond the CA", func(t *testing.T) {
		der, err := lab.intermIs.SignOCSP(good, now, lab.interm.NotAfter.Add(time.Second), nil, now)
		wantPolicy(t, der, err)
	})
	t.Run("thisUpdate not before nextUpdate", func(t *testing.T) {
		der, err := lab.intermIs.SignOCSP(good, next, now, nil, now)
		wantPolicy(t, der, err)
	})
	t.Run("CA expired", func(t *testing.T) {
		der, err := lab.intermIs.SignOCSP(good, now, next, nil, lab.interm.NotAfter.Add(time.Second))
		wantPolicy(t, der, err)
	})

	profile := map[string][]OCSPEntry{
		"no entries":              nil,
		"unknown status":          {{Serial: big.NewInt(1), Status: "fine"}},
		"status in capitals":      {{Serial: big.NewInt(1), Status: "GOOD"}},
		"no serial":               {{Status: "good"}},
		"revoked without time":    {{Serial: big.NewInt(1), Status: "revoked", Reason: 1}},
		"revoked with reason 7":   {{Serial: big.NewInt(1), Status: "revoked", RevokedAt: now, Reason: 7}},
		"revoked remove_from_crl": {{Serial: big.NewInt(1), Status: "revoked", RevokedAt: now, Reason: 8}},
		"good with revocation":    {{Serial: big.NewInt(1), Status: "good", RevokedAt: now}},
		"unknown with reason":     {{Serial: big.NewInt(1), Status: "unknown", Reason: 1}},
		"serial twice":            {{Serial: big.NewInt(1), Status: "good"}, {Serial: big.NewInt(1), Status: "unknown"}},
		"negative serial":         {{Serial: big.NewInt(-1), Status: "good"}},
	}
	for name, entries := range profile {
		t.Run(name, func(t *testing.T) {
			der, err := lab.intermIs.SignOCSP(entries, now, next, nil, now)
			wantProfile(t, der, err)
		})
	}
	t.Run("nonce over 32 octets", func(t *testing.T) {
		der, err := lab.intermIs.SignOCSP(good, now, next, make([]byte, 33), now)
		wantProfile(t, der, err)
	})
}

func TestSignOCSPNonce(t *testing.T) {
	now := time.Now()
	lab := newLabCA(t, "p256", 70, now)
	nonce := []byte("0123456789abcdef")
	der, err := lab.intermIs.SignOCSP([]OCSPEntry{{Serial: big.NewInt(5), Status: "good", Reason: -1}}, now, now.Add(time.Hour), nonce, now)
	if err != nil {
		t.Fatal(err)
	}
	if got := responseNonce(t, der); !bytes.Equal(got, nonce) {
		t.Errorf("nonce %X, want %X", got, nonce)
	}
	der, err = lab.intermIs.SignOCSP([]OCSPEntry{{Serial: big.NewInt(5), Status: "good", Reason: -1}}, now, now.Add(time.Hour), nil, now)
	if err != nil {
		t.Fatal(err)
	}
	if got := responseNonce(t, der); got != nil {
		t.Errorf("nonce %X in a response to a request without one", got)
	}
}

// The test decodes with encoding/asn1 structures of its own, independent of
// the cryptobyte encoder under test.

type testCertID struct {
	Raw           asn1.RawContent
	HashAlgorithm pkix.AlgorithmIdentifier
	NameHash      []byte
	IssuerKeyHash []byte
	SerialNumber  *big.Int
}

type testResponseData struct {
	Version     int `asn1:"optional,explicit,tag:0,default:0"`
	ResponderID asn1.RawValue
	ProducedAt  time.Time `asn1:"generalized"`
	Responses   []struct {
		CertID testCertID
		Rest   []asn1.RawValue `asn1:"optional"` // status, times, extensions
	}
	Extensions []pkix.Extension `asn1:"optional,explicit,tag:1"`
}

func parseResponseData(t *testing.T, der []byte) testResponseData {
	t.Helper()
	var resp struct {
		Status asn1.Enumerated
		Bytes  struct {
			Type     asn1.ObjectIdentifier
			Response []byte
		} `asn1:"explicit,tag:0"`
	}
	if rest, err := asn1.Unmarshal(der, &resp); err != nil || len(rest) > 0 {
		t.Fatalf("OCSPResponse: %v (%d trailing bytes)", err, len(rest))
	}
	var basic struct {
		TBS       asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}
	if rest, err := asn1.Unmarshal(resp.Bytes.Response, &basic); err != nil || len(rest) > 0 {
		t.Fatalf("BasicOCSPResponse: %v (%d trailing bytes)", err, len(rest))
	}
	var rd testResponseData
	if rest, err := asn1.Unmarshal(basic.TBS.FullBytes, &rd); err != nil || len(rest) > 0 {
		t.Fatalf("ResponseData: %v (%d trailing bytes)", err, len(rest))
	}
	return rd
}

func parseCertIDs(t *testing.T, der []byte) []testCertID {
	t.Helper()
	var ids []testCertID
	for _, r := range parseResponseData(t, der).Responses {
		ids = append(ids, r.CertID)
	}
	return ids
}

func responseNonce(t *testing.T, der []byte) []byte {
	t.Helper()
	return findNonce(t, parseResponseData(t, der).Extensions)
}

type testRequest struct {
	TBS struct {
		Version   int           `asn1:"optional,explicit,tag:0,default:0"`
		Requestor asn1.RawValue `asn1:"optional,explicit,tag:1"`
		List      []struct {
			CertID testCertID
			Rest   []asn1.RawValue `asn1:"optional"`
		}
		Extensions []pkix.Extension `asn1:"optional,explicit,tag:2"`
	}
}

func parseRequest(t *testing.T, der []byte) testRequest {
	t.Helper()
	var req testRequest
	if _, err := asn1.Unmarshal(der, &req); err != nil {
		t.Fatalf("OCSPRequest: %v", err)
	}
	return req
}

func requestCertIDs(t *testing.T, der []byte) []testCertID {
	t.Helper()
	var ids []testCertID
	for _, r := range parseRequest(t, der).TBS.List {
		ids = append(ids, r.CertID)
	}
	return ids
}

func requestNonce(t *testing.T, der []byte) []byte {
	t.Helper()
	n := findNonce(t, parseRequest(t, der).TBS.Extensions)
	if n == nil {
		t.Fatal("openssl's request has no nonce")
	}
	return n
}

func findNonce(t *testing.T, exts []pkix.Extension) []byte {
	t.Helper()
	for _, e := range exts {
		if e.Id.Equal(oidOCSPNonce) {
			var n []byte
			if rest, err := asn1.Unmarshal(e.Value, &n); err != nil || len(rest) > 0 {
				t.Fatalf("nonce is not an OCTET STRING: %v", err)
			}
			return n
		}
	}
	return nil
}
