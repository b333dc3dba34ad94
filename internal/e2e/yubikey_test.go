package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device/hotplug"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey/pcscdtest"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// The end-to-end tests pull cards while the appliance uses them; they plug into vpcd's
// second reader so that, should piv-go leak a handle in this process, the first
// reader (used by the other packages' tests) stays usable.
const (
	ykVPCD   = "localhost:35964"
	ykReader = "Virtual PCD 00 01"
	ykHSM    = "yubikey-20242024"
)

// startYubiKeyAppliance plugs a virtual YubiKey 5 into pcscd (management key
// protected by its PIN, as ykman --protect leaves it) and starts an appliance whose
// only backend is the PIV one, with the hotplug watcher as `iot-hsm run` has it.
func startYubiKeyAppliance(t *testing.T, brokerURL, pin string) (*appliance, *pcscdtest.Plugged, *vyubikey.Card) {
	t.Helper()
	pcscdtest.LockAllReaders(t) // before the one reader PlugCard takes: always in port order
	card, err := vyubikey.New(vyubikey.Config{Serial: 20242024, StatePath: filepath.Join(t.TempDir(), "card.json")})
	if err != nil {
		t.Fatal(err)
	}
	plugged := pcscdtest.PlugCard(t, card, ykVPCD)
	pcscdtest.ProtectManagementKey(t, ykReader)
	return startPIVAppliance(t, brokerURL, pin, card), plugged, card
}

// startPIVAppliance starts an appliance whose only backend is the PIV one, configured
// by a [yubikey] section that trusts card's attestation root, with the hotplug
// watcher as `iot-hsm run` has it.
func startPIVAppliance(t *testing.T, brokerURL, pin string, card *vyubikey.Card) *appliance {
	t.Helper()
	pcscdtest.LockAllReaders(t) // its backend looks at every reader
	roots := filepath.Join(t.TempDir(), "attestation-roots.pem")
	if err := os.WriteFile(roots, ca.EncodeCertificatePEM(card.AttestationRoot()), 0o600); err != nil {
		t.Fatal(err)
	}
	a := start(t, brokerURL, "yk-"+mqtttest.RandomID(), options{yubikey: &config.YubiKey{PIN: pin, AttestationRoots: roots}})
	a.hsmID = ykHSM
	ctx, cancel := context.WithCancel(context.Background())
	w := &hotplug.Watcher{OnChange: func(string) { a.dev.CheckPresence() }}
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// A YubiKey plugged in for the first time after the appliance started is announced
// like one coming back: an hsm.present event, and the status lists it.
func TestYubiKeyFirstPluggedAfterStart(t *testing.T) {
	b := brokers(t)[1]
	card, err := vyubikey.New(vyubikey.Config{Serial: 20242024, StatePath: filepath.Join(t.TempDir(), "card.json")})
	if err != nil {
		t.Fatal(err)
	}
	a := startPIVAppliance(t, b.url, "123456", card)
	watch := watchStatus(t, b.url, a)
	watch.until(t, "the appliance online without the key", func(st protocol.Status) bool { return st.Online && len(st.HSMs) == 0 })
	pcscdtest.PlugCard(t, card, ykVPCD)
	watch.until(t, "the key listed", func(st protocol.Status) bool {
		return len(st.HSMs) == 1 && st.HSMs[0].ID == ykHSM && st.HSMs[0].Present
	})
	deadline := time.Now().Add(5 * time.Second)
	for !watch.saw("hsm.present", ykHSM) {
		if time.Now().After(deadline) {
			t.Fatal("no hsm.present event for a YubiKey plugged in after the start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestYubiKeyWorkflowOverMQTT(t *testing.T) {
	b := brokers(t)[0]
	a, _, _ := startYubiKeyAppliance(t, b.url, "123456")
	op := newOperator(t, b.url)

	list := ok[protocol.HSMListResult](t, op.call(a, protocol.CmdHSMList, struct{}{}))
	if len(list.HSMs) != 1 || list.HSMs[0].ID != ykHSM || list.HSMs[0].Kind != "yubikey" {
		t.Fatalf("hsm.list: %+v", list)
	}
	// provisionCAs uses slots 01 and 02, which are PKCS#11 names; a YubiKey has 9a, 82...
	root := ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: ykHSM, Slot: "9c", Mode: "generate", KeyType: "p384"}))
	if !strings.Contains(root.Attestation, "BEGIN CERTIFICATE") {
		t.Fatalf("a generated YubiKey key comes with its attestation: %+v", root)
	}
	rootPEM := ok[protocol.CertificateResult](t, op.call(a, protocol.CmdSlotSelfSign,
		protocol.ProvisioningCertArgs{SlotID: root.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "YubiKey Root CA", 1))})).Certificate
	interm := ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: ykHSM, Slot: "82", Mode: "generate", KeyType: "p256"}))
	csr := ok[protocol.CSRResult](t, op.call(a, protocol.CmdSlotCSR,
		protocol.ProvisioningCertArgs{SlotID: interm.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "YubiKey Issuing CA", 0))})).CSR
	zero := 0
	intermPEM := ok[protocol.SignResult](t, op.call(a, protocol.CmdSign, protocol.SignArgs{CAID: root.CAID, Kind: protocol.KindCertificate, CSR: csr,
		Profile: &protocol.Profile{Validity: "8760h", IsCA: true, MaxPathLen: &zero, KeyUsage: []string{"cert_sign", "crl_sign"}}})).Certificate
	ok[protocol.SlotShow](t, op.call(a, protocol.CmdSlotImport, protocol.ImportCertArgs{SlotID: interm.SlotID, Certificate: intermPEM, Chain: rootPEM}))

	leaf := ok[protocol.SignResult](t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: interm.SlotID, Kind: protocol.KindCertificate,
		CSR: leafCSR(t, "yk.example.com"), Profile: &protocol.Profile{Validity: "720h", ExtKeyUsage: []string{"server_auth"}}}))
	next := time.Now().Add(24 * time.Hour).UTC()
	crl := ok[protocol.SignResult](t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: interm.SlotID, Kind: protocol.KindCRL, Number: "1", NextUpdate: &next}))

	dir := t.TempDir()
	writeFile(t, dir, "root.pem", []byte(rootPEM))
	writeFile(t, dir, "interm.pem", []byte(intermPEM))
	writeFile(t, dir, "leaf.pem", []byte(leaf.Certificate))
	writeFile(t, dir, "crl.pem", []byte(crl.CRL))
	writeFile(t, dir, "chain.pem", []byte(intermPEM+rootPEM))
	openssl(t, dir, "verify", "-x509_strict", "-CAfile", "root.pem", "root.pem")
	openssl(t, dir, "verify", "-x509_strict", "-CAfile", "root.pem", "-untrusted", "interm.pem", "leaf.pem")
	openssl(t, dir, "crl", "-in", "crl.pem", "-CAfile", "chain.pem", "-verify", "-noout")

	// What the appliance provisioned is in the card's slots for other tools to see.
	// The appliance releases the card when idle; wait for that.
	var out []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		out, _ = exec.Command("yubico-piv-tool", "-r", ykReader, "-a", "status").CombinedOutput()
		if strings.Contains(string(out), "YubiKey Root CA") {
			break
		}
	}
	if !strings.Contains(string(out), "YubiKey Root CA") || !strings.Contains(string(out), "YubiKey Issuing CA") {
		t.Fatalf("yubico-piv-tool -a status does not show the CA certificates:\n%s", out)
	}
}

func TestYubiKeyUnplugWhileQueuedAndReplug(t *testing.T) {
	b := brokers(t)[1]
	a, plugged, card := startYubiKeyAppliance(t, b.url, "123456")
	op := newOperator(t, b.url)
	watch := watchStatus(t, b.url, a)
	root := ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: ykHSM, Slot: "9a", Mode: "generate", KeyType: "p256"}))
	ok[protocol.CertificateResult](t, op.call(a, protocol.CmdSlotSelfSign,
		protocol.ProvisioningCertArgs{SlotID: root.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Pull Me Root", 0))}))
	watch.until(t, "the slot connected", func(st protocol.Status) bool { return st.ConnectedSlots == 1 })

	// Keep the card's worker busy (a slow card generating a key), queue a sign
	// behind it, then pull the card.
	card.SetLatency(300 * time.Millisecond)
	gen, gp := op.envelope("", protocol.ProvisionArgs{HSM: ykHSM, Slot: "95", Mode: "generate", KeyType: "p256"})
	op.publish(a.dev.Topics().Cmd(protocol.CmdSlotProvision), gp)
	time.Sleep(100 * time.Millisecond)
	next := time.Now().Add(time.Hour).UTC()
	sid, sp := op.envelope("", protocol.SignArgs{SlotID: root.SlotID, Kind: protocol.KindCRL, Number: "1", NextUpdate: &next})
	op.publish(a.dev.Topics().Cmd(protocol.CmdSign), sp)
	time.Sleep(100 * time.Millisecond)
	pulled := time.Now()
	plugged.Unplug(t)

	failed(t, op.wait(sid, 1, 30*time.Second), protocol.CodeHSMOffline)
	if r := op.wait(gen, 1, 30*time.Second); r.OK {
		t.Log("the RSA-4096 generation finished before the card went")
	} else if r.Error.Code != protocol.CodeHSMOffline {
		t.Fatalf("generation on a pulled card: %+v", r.Error)
	}
	watch.until(t, "the slot disconnected", func(st protocol.Status) bool { return st.ConnectedSlots == 0 && len(st.Slots) > 0 })
	if d := time.Since(pulled); d > time.Second+500*time.Millisecond {
		// The assertion is on the status a dashboard sees; the unplug helper itself
		// waits for pcscd, so allow its own latency on top of the 1 s target.
		t.Fatalf("status showed the slot disconnected %v after the card was pulled", d)
	}

	card.SetLatency(0)
	plugged.Replug(t)
	watch.until(t, "the slot connected again", func(st protocol.Status) bool { return st.ConnectedSlots == 1 })
	ok[protocol.SignResult](t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: root.SlotID, Kind: protocol.KindCRL, Number: "2", NextUpdate: &next}))
	if !watch.saw("hsm.absent", ykHSM) || !watch.saw("hsm.present", ykHSM) {
		t.Fatal("no hsm.absent / hsm.present events")
	}
}

func TestYubiKeyWrongPINOverMQTT(t *testing.T) {
	b := brokers(t)[1]
	a, _, _ := startYubiKeyAppliance(t, b.url, "") // no PIN configured
	op := newOperator(t, b.url)
	failed(t, op.call(a, protocol.CmdSlotProvision, protocol.ProvisionArgs{HSM: ykHSM, Slot: "9a", Mode: "generate", KeyType: "p256"}), protocol.CodePINRequired)
	r := op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: ykHSM, PIN: "999999"})
	failed(t, r, protocol.CodePINIncorrect)
	if r.Error.Details["retries"] != float64(2) || strings.Contains(r.Error.Message, "999999") {
		t.Fatalf("wrong PIN reply: %+v", r.Error)
	}
	st := ok[protocol.Status](t, op.call(a, protocol.CmdStatus, struct{}{}))
	if len(st.HSMs) != 1 || st.HSMs[0].PIN.Set || st.HSMs[0].PIN.Retries == nil || *st.HSMs[0].PIN.Retries != 2 {
		t.Fatalf("status after one wrong PIN (not retried): %+v", st.HSMs)
	}
	failed(t, op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: ykHSM, PIN: "999998"}), protocol.CodePINIncorrect)
	// One try left: a PIN is presented only when the request says force.
	r = op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: ykHSM, PIN: "999997"})
	failed(t, r, protocol.CodeConflict)
	if r.Error.Details["retries"] != float64(1) || !strings.Contains(r.Error.Message, "force") {
		t.Fatalf("last-try refusal: %+v", r.Error)
	}
	st = ok[protocol.Status](t, op.call(a, protocol.CmdStatus, struct{}{}))
	if *st.HSMs[0].PIN.Retries != 1 {
		t.Fatalf("the refused request spent a try: %+v", st.HSMs[0].PIN)
	}
	failed(t, op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: ykHSM, PIN: "999997", Force: true}), protocol.CodePINBlocked)
	failed(t, op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: ykHSM, PIN: "123456"}), protocol.CodePINBlocked)
}

// A wrong PIN sent to hsm.set_pin leaves the card's working PIN in use (the slot
// keeps signing), and the reply says how many tries are left.
func TestYubiKeyWrongPINKeepsTheWorkingOne(t *testing.T) {
	b := brokers(t)[1]
	a, _, _ := startYubiKeyAppliance(t, b.url, "123456")
	op := newOperator(t, b.url)
	ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision, protocol.ProvisionArgs{HSM: ykHSM, Slot: "9c", Mode: "generate", KeyType: "p256"}))
	r := op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: ykHSM, PIN: "654321"})
	failed(t, r, protocol.CodePINIncorrect)
	if r.Error.Details["retries"] != float64(2) {
		t.Fatalf("wrong PIN reply: %+v", r.Error)
	}
	st := ok[protocol.Status](t, op.call(a, protocol.CmdStatus, struct{}{}))
	if !st.HSMs[0].PIN.Set {
		t.Fatalf("the working PIN was dropped: %+v", st.HSMs[0].PIN)
	}
	ok[protocol.CertificateResult](t, op.call(a, protocol.CmdSlotSelfSign, protocol.ProvisioningCertArgs{SlotID: ykHSM + "/9c",
		ProvisioningCert: string(pkitest.ProvisioningCert(t, "After a wrong PIN", 0))}))
}

// TestMain stops a pcscd these tests had to start themselves.
func TestMain(m *testing.M) { pcscdtest.Main(m) }

// hsm.set_pin with a management key: the card checks it before anything is kept. A
// wrong key is refused and changes nothing on the card (its PIN-protected key still
// serves); an SO PIN or PUK is refused without being tried.
func TestYubiKeySetPINWithManagementKey(t *testing.T) {
	b := brokers(t)[1]
	a, _, _ := startYubiKeyAppliance(t, b.url, "")
	op := newOperator(t, b.url)
	r := op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: ykHSM, PIN: "123456", SOPIN: "12345678"})
	failed(t, r, protocol.CodeBadRequest)
	failed(t, op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: ykHSM, PIN: "123456", ManagementKey: "not hex"}), protocol.CodeBadRequest)

	wrong := "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a09080"
	r = op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: ykHSM, PIN: "123456", ManagementKey: wrong})
	failed(t, r, protocol.CodeBadRequest)
	if !strings.Contains(r.Error.Message, "refused the management key") || strings.Contains(r.Error.Message, wrong) {
		t.Fatalf("wrong management key reply: %q", r.Error.Message)
	}
	st := ok[protocol.Status](t, op.call(a, protocol.CmdStatus, struct{}{}))
	if st.HSMs[0].PIN.Set {
		t.Fatalf("a PIN was kept although its request was refused: %+v", st.HSMs[0].PIN)
	}

	// The card is as it was: the PIN alone unlocks its PIN-protected management key.
	ok[protocol.SetPINResult](t, op.call(a, protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: ykHSM, PIN: "123456"}))
	ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision, protocol.ProvisionArgs{HSM: ykHSM, Slot: "9a", Mode: "generate", KeyType: "p256"}))
}
