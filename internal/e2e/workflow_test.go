package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// leafCSR is what a TLS server sends its PKI.
func leafCSR(t *testing.T, dns string) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: dns}, DNSNames: []string{dns},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func openssl(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func writeFile(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// ca provisions a root (slot 01) and an intermediate (slot 02, signed by the root
// through its CA topic) on the appliance, as the original IoT-HSM's wizard does, over MQTT only.
func provisionCAs(t *testing.T, op *operator, a *appliance) (root, interm protocol.ProvisionResult, rootPEM, intermPEM string) {
	t.Helper()
	root = ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: a.hsmID, Slot: "01", Mode: "generate", KeyType: "p256", Label: "root"}))
	rootPEM = ok[protocol.CertificateResult](t, op.call(a, protocol.CmdSlotSelfSign,
		protocol.ProvisioningCertArgs{SlotID: root.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Test Root CA", 1))})).Certificate

	interm = ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: a.hsmID, Slot: "02", Mode: "generate", KeyType: "p384", Label: "issuing"}))
	csr := ok[protocol.CSRResult](t, op.call(a, protocol.CmdSlotCSR,
		protocol.ProvisioningCertArgs{SlotID: interm.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Test Issuing CA", 0))})).CSR

	// The PKI has the root sign the intermediate, addressing the root by its ca_id.
	zero := 0
	id, payload := op.envelope("", protocol.SignArgs{Kind: protocol.KindCertificate, CSR: csr, Profile: &protocol.Profile{
		Validity: "26280h", IsCA: true, MaxPathLen: &zero, KeyUsage: []string{"cert_sign", "crl_sign", "digital_signature"},
	}})
	op.publish(a.dev.Topics().CASign(root.CAID), payload)
	intermPEM = ok[protocol.SignResult](t, op.wait(id, 1, time.Minute)).Certificate

	shown := ok[protocol.SlotShow](t, op.call(a, protocol.CmdSlotImport,
		protocol.ImportCertArgs{SlotID: interm.SlotID, Certificate: intermPEM, Chain: rootPEM}))
	if shown.State != "provisioned" {
		t.Fatalf("intermediate after import: %+v", shown)
	}
	return root, interm, rootPEM, intermPEM
}

func TestWorkflowOverMQTT(t *testing.T) {
	for _, b := range brokers(t) {
		t.Run(b.name, func(t *testing.T) {
			a := startAppliance(t, b.url, "wf-"+b.name, softhsmtest.New(t, "wf"), options{})
			op := newOperator(t, b.url)
			_, interm, rootPEM, intermPEM := provisionCAs(t, op, a)
			dir := t.TempDir()
			writeFile(t, dir, "root.pem", []byte(rootPEM))
			writeFile(t, dir, "interm.pem", []byte(intermPEM))
			openssl(t, dir, "verify", "-x509_strict", "-CAfile", "root.pem", "root.pem")
			openssl(t, dir, "verify", "-x509_strict", "-CAfile", "root.pem", "interm.pem")

			// A TLS server certificate from a CSR, issued by the intermediate.
			leaf := ok[protocol.SignResult](t, op.call(a, protocol.CmdSign, protocol.SignArgs{
				SlotID: interm.SlotID, Kind: protocol.KindCertificate, CSR: leafCSR(t, "www.example.com"),
				Profile: &protocol.Profile{Validity: "2160h", KeyUsage: []string{"digital_signature"}, ExtKeyUsage: []string{"server_auth"}},
			}))
			writeFile(t, dir, "leaf.pem", []byte(leaf.Certificate))
			openssl(t, dir, "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", "root.pem", "-untrusted", "interm.pem", "leaf.pem")
			if out := openssl(t, dir, "x509", "-in", "leaf.pem", "-noout", "-ext", "subjectAltName"); !strings.Contains(out, "www.example.com") {
				t.Fatalf("leaf lacks the CSR's SAN:\n%s", out)
			}

			// A CRL revoking it.
			next := time.Now().Add(24 * time.Hour).UTC()
			crl := ok[protocol.SignResult](t, op.call(a, protocol.CmdSign, protocol.SignArgs{
				SlotID: interm.SlotID, Kind: protocol.KindCRL, Number: "1", NextUpdate: &next,
				Revoked: []protocol.RevokedArg{{Serial: leaf.Serial, RevokedAt: time.Now().UTC(), Reason: "key_compromise"}},
			}))
			writeFile(t, dir, "crl.pem", []byte(crl.CRL))
			writeFile(t, dir, "chain.pem", []byte(intermPEM+rootPEM))
			openssl(t, dir, "crl", "-in", "crl.pem", "-CAfile", "chain.pem", "-verify", "-noout")
			cmd := exec.Command("openssl", "verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "root.pem", "-untrusted", "interm.pem", "leaf.pem")
			cmd.Dir = dir
			if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "revoked") {
				t.Fatalf("openssl does not see the leaf revoked by the CRL: %v\n%s", err, out)
			}

			// CMS and OCSP from the same CA.
			cms := ok[protocol.SignResult](t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: interm.SlotID, Kind: protocol.KindCMS, Data: []byte("firmware v2")}))
			writeFile(t, dir, "sig.der", cms.CMS)
			if out := openssl(t, dir, "cms", "-verify", "-inform", "DER", "-in", "sig.der", "-CAfile", "root.pem", "-purpose", "any", "-binary"); !strings.Contains(out, "firmware v2") {
				t.Fatalf("CMS content: %q", out)
			}
			resp := ok[protocol.SignResult](t, op.call(a, protocol.CmdSign, protocol.SignArgs{
				SlotID: interm.SlotID, Kind: protocol.KindOCSP, NextUpdate: &next,
				Responses: []protocol.OCSPArg{{Serial: leaf.Serial, Status: "good"}},
			}))
			issuer, _ := ca.ParseCertificatePEM([]byte(intermPEM))
			leafCert, _ := ca.ParseCertificatePEM([]byte(leaf.Certificate))
			parsed, err := ocsp.ParseResponseForCert(resp.OCSP, leafCert, issuer)
			if err != nil || parsed.Status != ocsp.Good {
				t.Fatalf("OCSP response: %v %+v", err, parsed)
			}

			// The status shows both CA slots connected.
			st := ok[protocol.Status](t, op.call(a, protocol.CmdStatus, struct{}{}))
			if st.ConnectedSlots != 2 || st.SlotsTotal != 2 || !st.Online || st.Broker != "connected" {
				t.Fatalf("status: %+v", st)
			}
		})
	}
}
