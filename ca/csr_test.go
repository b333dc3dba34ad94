package ca

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"slices"
	"testing"
	"time"
)

func TestIntermediate(t *testing.T) {
	for _, tc := range []struct{ root, interm string }{
		{"p384", "p256"},
		{"rsa2048", "p384"},
		{"p256", "rsa3072"},
	} {
		t.Run(tc.root+"-"+tc.interm, func(t *testing.T) {
			t.Parallel()
			now := time.Now()
			root, rootKey := labRoot(t, tc.root, 1, now)
			intermKey := testKey(t, tc.interm, 1)
			tmpl := labTemplate(t, "IoT HSM Lab Issuing CA", 0)

			req, err := CSR(tmpl, intermKey)
			if err != nil {
				t.Fatalf("CSR: %v", err)
			}
			// The PKI sees the CSR as PEM.
			req, err = ParseCSRPEM(EncodeCSRPEM(req))
			if err != nil {
				t.Fatalf("ParseCSRPEM: %v", err)
			}
			checkCSRFollowsTemplate(t, req, tmpl)
			if !publicKeyEqual(req.PublicKey, intermKey.Public()) {
				t.Error("CSR does not carry the slot key")
			}
			if req.SignatureAlgorithm != wantSigAlg[tc.interm] {
				t.Errorf("CSR signature algorithm %v, want %v", req.SignatureAlgorithm, wantSigAlg[tc.interm])
			}

			interm := issueFromCSR(t, req, root, rootKey, now)
			// The appliance receives the certificate and chain as PEM.
			interm, err = ParseCertificatePEM(EncodeCertificatePEM(interm))
			if err != nil {
				t.Fatal(err)
			}
			chain, err := ParseCertificatesPEM(EncodeCertificatesPEM([]*x509.Certificate{root}))
			if err != nil {
				t.Fatal(err)
			}
			if err := CheckImport(interm, chain, nil, intermKey.Public(), now); err != nil {
				t.Errorf("CheckImport with root in chain: %v", err)
			}
			if err := CheckImport(interm, nil, []*x509.Certificate{root}, intermKey.Public(), now); err != nil {
				t.Errorf("CheckImport with root already known: %v", err)
			}
			opensslVerify(t, root, interm)
		})
	}
}

func checkCSRFollowsTemplate(t *testing.T, req *x509.CertificateRequest, tmpl *x509.Certificate) {
	t.Helper()
	if err := req.CheckSignature(); err != nil {
		t.Errorf("CSR signature: %v", err)
	}
	if !bytes.Equal(req.RawSubject, tmpl.RawSubject) {
		t.Errorf("CSR subject %x, want template's %x", req.RawSubject, tmpl.RawSubject)
	}
	want := slices.DeleteFunc(slices.Clone(tmpl.Extensions), func(e pkix.Extension) bool {
		return e.Id.Equal(oidExtSubjectKeyID) || e.Id.Equal(oidExtAuthorityKeyID)
	})
	if len(want) == len(tmpl.Extensions) {
		t.Error("template had no SKI to leave out; test proves less than it should")
	}
	if !slices.EqualFunc(req.Extensions, want, func(a, b pkix.Extension) bool {
		return a.Id.Equal(b.Id) && a.Critical == b.Critical && bytes.Equal(a.Value, b.Value)
	}) {
		t.Errorf("CSR extensions differ from template:\n got %v\nwant %v", req.Extensions, want)
	}
}
