package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os/exec"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/kmstest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/protocol"
)

const kmsRing = "projects/iot-hsm-e2e/locations/europe-west1/keyRings/pki_ca"

// kmsHSM is the HSM id of kmsRing: its last segment, lowercased, '_' read as '-'.
const kmsHSM = "cloudkms-pki-ca"

// startKMS starts the local KMS server with one key ring and, in it, an RSA key made
// outside the appliance (to be taken over with mode existing).
func startKMS(t *testing.T) *kmstest.Server {
	t.Helper()
	srv := kmstest.Start(t)
	srv.GenerationDelay = 100 * time.Millisecond // HSM keys start PENDING_GENERATION
	if err := srv.AddKeyRing(kmsRing); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.AddKey(kmsRing, "issuing-ca", kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256, kmspb.ProtectionLevel_HSM); err != nil {
		t.Fatal(err)
	}
	return srv
}

// startKMSAppliance starts an appliance whose only backend is the Cloud KMS key ring
// of srv, configured by a [[cloudkms]] block (the real client over gRPC, plaintext to
// the loopback test server, with short timeouts so that outages show quickly).
func startKMSAppliance(t *testing.T, brokerURL, deviceID string, srv *kmstest.Server) *appliance {
	t.Helper()
	a := start(t, brokerURL, deviceID, options{cloudkms: []config.CloudKMS{{KeyRing: kmsRing, Endpoint: srv.Addr(), Insecure: true,
		CallTimeout: 2 * time.Second, ProbeInterval: 500 * time.Millisecond}}})
	a.hsmID = kmsHSM
	return a
}

// kmsCAs provisions, over MQTT only, a root generated in Cloud KMS (self-signed from
// a provisioning certificate) and an intermediate on a key made outside the appliance
// (mode existing), certified through a CSR signed by the root and imported.
func kmsCAs(t *testing.T, op *operator, a *appliance, srv *kmstest.Server) (root, interm protocol.ProvisionResult, rootPEM, intermPEM string) {
	t.Helper()
	root = ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: a.hsmID, Slot: "root-ca", Mode: "generate", KeyType: "p384", Label: "Root CA"}))
	if root.SlotID != kmsHSM+"/root-ca" || root.KeyType != "p384" {
		t.Fatalf("root provisioned as %+v", root)
	}
	// The attestation Cloud KMS gives for an HSM key: the HSM's certificate chains.
	att, err := ca.ParseCertificatesPEM([]byte(root.Attestation))
	if err != nil || len(att) == 0 {
		t.Fatalf("attestation of a generated KMS key: %v\n%s (note %q)", err, root.Attestation, root.Note)
	}
	// The key is the one in KMS.
	kmsPub, err := srv.PublicKey(kmsRing + "/cryptoKeys/root-ca/cryptoKeyVersions/1")
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := ca.ID(kmsPub); id != root.CAID {
		t.Fatal("the root's ca_id is not that of the KMS key")
	}
	rootPEM = ok[protocol.CertificateResult](t, op.call(a, protocol.CmdSlotSelfSign,
		protocol.ProvisioningCertArgs{SlotID: root.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "KMS Root CA", 1))})).Certificate

	interm = ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: a.hsmID, Slot: "issuing-ca/1", Mode: "existing"}))
	if interm.SlotID != kmsHSM+"/issuing-ca/1" || interm.KeyType != "rsa2048" {
		t.Fatalf("intermediate provisioned as %+v", interm)
	}
	csr := ok[protocol.CSRResult](t, op.call(a, protocol.CmdSlotCSR,
		protocol.ProvisioningCertArgs{SlotID: interm.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "KMS Issuing CA", 0))})).CSR
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

func TestCloudKMSWorkflowOverMQTT(t *testing.T) {
	for _, b := range brokers(t) {
		t.Run(b.name, func(t *testing.T) {
			srv := startKMS(t)
			a := startKMSAppliance(t, b.url, "kms-"+b.name, srv)
			op := newOperator(t, b.url)

			// The key ring is an HSM; the key made outside is already a slot.
			list := ok[protocol.HSMListResult](t, op.call(a, protocol.CmdHSMList, struct{}{}))
			if len(list.HSMs) != 1 || list.HSMs[0].ID != kmsHSM || list.HSMs[0].Kind != "cloudkms" || !list.HSMs[0].Present ||
				list.HSMs[0].Serial != kmsRing || len(list.HSMs[0].Slots) != 1 || list.HSMs[0].Slots[0].Slot != "issuing-ca/1" {
				t.Fatalf("hsm.list: %+v", list)
			}

			_, interm, rootPEM, intermPEM := kmsCAs(t, op, a, srv)
			dir := t.TempDir()
			writeFile(t, dir, "root.pem", []byte(rootPEM))
			writeFile(t, dir, "interm.pem", []byte(intermPEM))
			openssl(t, dir, "verify", "-x509_strict", "-CAfile", "root.pem", "root.pem")
			openssl(t, dir, "verify", "-x509_strict", "-CAfile", "root.pem", "interm.pem")

			leaf := ok[protocol.SignResult](t, op.call(a, protocol.CmdSign, protocol.SignArgs{
				SlotID: interm.SlotID, Kind: protocol.KindCertificate, CSR: leafCSR(t, "device.example.com"),
				Profile: &protocol.Profile{Validity: "2160h", KeyUsage: []string{"digital_signature"}, ExtKeyUsage: []string{"server_auth"}},
			}))
			writeFile(t, dir, "leaf.pem", []byte(leaf.Certificate))
			openssl(t, dir, "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", "root.pem", "-untrusted", "interm.pem", "leaf.pem")

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
			// Every signature above was an AsymmetricSign with its integrity checks.
			if n := srv.Calls("AsymmetricSign"); n < 5 {
				t.Fatalf("%d AsymmetricSign calls", n)
			}

			// The status shows the key ring and both CA slots connected.
			st := ok[protocol.Status](t, op.call(a, protocol.CmdStatus, struct{}{}))
			if len(st.HSMs) != 1 || st.HSMs[0].ID != kmsHSM || st.HSMs[0].Kind != "cloudkms" || !st.HSMs[0].Present || !st.HSMs[0].PIN.Set {
				t.Fatalf("status hsms: %+v", st.HSMs)
			}
			if st.ConnectedSlots != 2 || st.SlotsTotal != 2 {
				t.Fatalf("status: %d of %d slots connected: %+v", st.ConnectedSlots, st.SlotsTotal, st.Slots)
			}
			for _, s := range st.Slots {
				if !strings.HasPrefix(s.SlotID, kmsHSM+"/") || !s.Connected || s.State != "provisioned" {
					t.Fatalf("status slot %+v", s)
				}
			}

			// What a key ring refuses.
			failed(t, op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: a.hsmID, PIN: "123456"}), protocol.CodeUnsupported)
			failed(t, op.call(a, protocol.CmdSlotProvision, protocol.ProvisionArgs{HSM: a.hsmID, Slot: "imported", Mode: "import", KeyPEM: ecKeyPEM(t)}), protocol.CodeUnsupported)
			failed(t, op.call(a, protocol.CmdSlotProvision, protocol.ProvisionArgs{HSM: a.hsmID, Slot: "root-ca", Mode: "generate", KeyType: "p256", Overwrite: true}), protocol.CodeUnsupported)
			failed(t, op.call(a, protocol.CmdSlotProvision, protocol.ProvisionArgs{HSM: a.hsmID, Slot: "bad.name", Mode: "generate", KeyType: "p256"}), protocol.CodeBadRequest)
			// An RSA-PSS key (named -pss) is made, but the CA engine signs certificates
			// with PKCS#1 v1.5: the key refuses rather than sign under the wrong name.
			pss := ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision, protocol.ProvisionArgs{HSM: a.hsmID, Slot: "root-pss", Mode: "generate", KeyType: "rsa2048"}))
			failed(t, op.call(a, protocol.CmdSlotSelfSign, protocol.ProvisioningCertArgs{SlotID: pss.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "PSS Root", 0))}), protocol.CodeUnsupported)
		})
	}
}

func ecKeyPEM(t *testing.T) string {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
}

// statusWatch follows the retained status document and the events as an observer
// (a dashboard) sees them.
type statusWatch struct {
	*mqtttest.Client
	status, events string
}

func watchStatus(t *testing.T, brokerURL string, a *appliance) *statusWatch {
	t.Helper()
	st, ev := a.dev.Topics().Status(), a.dev.Topics().Events()
	c := mqtttest.Start(t, brokerURL, mqtttest.Options{Name: "observer", Watch: []string{st, ev}})
	return &statusWatch{Client: c, status: st, events: ev}
}

// until waits for a status document that satisfies ok.
func (w *statusWatch) until(t *testing.T, what string, ok func(protocol.Status) bool) protocol.Status {
	t.Helper()
	var st protocol.Status
	if !w.Wait(30*time.Second, func() bool {
		st = protocol.Status{}
		json.Unmarshal(w.Last(w.status), &st)
		return ok(st)
	}) {
		t.Fatalf("no status with %s; last: %+v", what, st)
	}
	return st
}

func (w *statusWatch) saw(typ, hsmID string) bool {
	for _, b := range w.Messages(w.events) {
		var e protocol.Event
		if json.Unmarshal(b, &e) == nil && e.Type == typ && e.HSM == hsmID {
			return true
		}
	}
	return false
}

func kmsSlot(st protocol.Status, slotID string) (protocol.StatusSlot, bool) {
	for _, s := range st.Slots {
		if s.SlotID == slotID {
			return s, true
		}
	}
	return protocol.StatusSlot{}, false
}

func kmsPresent(st protocol.Status) bool {
	for _, h := range st.HSMs {
		if h.ID == kmsHSM {
			return h.Present
		}
	}
	return false
}

// TestCloudKMSOutage: Cloud KMS going away turns the key ring absent and its slots
// disconnected in the status document; signing answers hsm_offline; when KMS is back,
// so are the key ring and the slots, and signing works again, without a restart.
func TestCloudKMSOutage(t *testing.T) {
	b := brokers(t)[0]
	srv := startKMS(t)
	a := startKMSAppliance(t, b.url, "kms-outage", srv)
	op := newOperator(t, b.url)
	w := watchStatus(t, b.url, a)
	root, _, _, _ := kmsCAs(t, op, a, srv)
	connected := func(st protocol.Status) bool {
		s, ok := kmsSlot(st, root.SlotID)
		return st.Online && kmsPresent(st) && ok && s.Connected && st.ConnectedSlots == 2
	}
	w.until(t, "both KMS slots connected", connected)
	a.dev.CheckPresence() // what the watch does every 2 s: the key ring is known present

	srv.Stop()
	st := w.until(t, "the key ring absent and its slots disconnected", func(st protocol.Status) bool {
		s, ok := kmsSlot(st, root.SlotID)
		return st.Online && !kmsPresent(st) && ok && !s.Connected && st.ConnectedSlots == 0
	})
	if s, _ := kmsSlot(st, root.SlotID); s.State != "provisioned" {
		t.Fatalf("the outage changed the slot's state: %+v", s)
	}
	if !w.saw("hsm.absent", kmsHSM) {
		t.Fatal("no hsm.absent event")
	}
	next := time.Now().Add(time.Hour).UTC()
	failed(t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: root.SlotID, Kind: protocol.KindCRL, Number: "1", NextUpdate: &next}), protocol.CodeHSMOffline)

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	w.until(t, "both KMS slots connected again", connected)
	if !w.saw("hsm.present", kmsHSM) {
		t.Fatal("no hsm.present event")
	}
	ok[protocol.SignResult](t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: root.SlotID, Kind: protocol.KindCRL, Number: "2", NextUpdate: &next}))
}
