package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// TestTwoAppliancesShareOneCA: the same imported CA key on two appliances; the PKI's
// requests on the CA topic are each answered exactly once, by one of them.
func TestTwoAppliancesShareOneCA(t *testing.T) {
	for _, b := range brokers(t) {
		t.Run(b.name, func(t *testing.T) {
			keyFile := filepath.Join(t.TempDir(), "ca.key")
			if out, err := exec.Command("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", keyFile).CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			keyPEM, _ := os.ReadFile(keyFile)
			a := startAppliance(t, b.url, "ha-a-"+b.name, softhsmtest.New(t, "ha-a"), options{queueSize: 256})
			bb := startAppliance(t, b.url, "ha-b-"+b.name, softhsmtest.New(t, "ha-b"), options{queueSize: 256})
			op := newOperator(t, b.url)

			var caID, rootPEM string
			for _, app := range []*appliance{a, bb} {
				res := ok[protocol.ProvisionResult](t, op.call(app, protocol.CmdSlotProvision,
					protocol.ProvisionArgs{HSM: app.hsmID, Slot: "01", Mode: "import", KeyPEM: string(keyPEM)}))
				if caID != "" && res.CAID != caID {
					t.Fatal("the same key gave two ca_ids")
				}
				caID = res.CAID
				if rootPEM == "" {
					rootPEM = ok[protocol.CertificateResult](t, op.call(app, protocol.CmdSlotSelfSign,
						protocol.ProvisioningCertArgs{SlotID: res.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Shared Root", 0))})).Certificate
				} else {
					// The second appliance is re-associated with the same certificate.
					ok[protocol.SlotShow](t, op.call(app, protocol.CmdSlotImport, protocol.ImportCertArgs{SlotID: res.SlotID, Certificate: rootPEM}))
				}
			}

			csr := leafCSR(t, "node.example.com")
			const n = 200
			ids := make([]string, n)
			topic := a.dev.Topics().CASign(caID)
			for i := range ids {
				id, p := op.envelope("", protocol.SignArgs{Kind: protocol.KindCertificate, CSR: csr, Profile: &protocol.Profile{Validity: "1h"}})
				ids[i] = id
				op.publish(topic, p)
			}
			by := map[string]int{}
			for _, id := range ids {
				r := op.wait(id, 1, 2*time.Minute)
				res := ok[protocol.SignResult](t, r)
				by[res.SlotID[:len(res.SlotID)-3]]++
			}
			time.Sleep(500 * time.Millisecond) // let any duplicate arrive
			for _, id := range ids {
				if c := op.count(id); c != 1 {
					t.Fatalf("request %s answered %d times", id, c)
				}
			}
			t.Logf("answers per appliance: %v", by)
			if b.name == "mosquitto" && len(by) != 2 {
				t.Fatalf("mosquitto shares the subscription round robin; answers came from %v", by)
			}
		})
	}
}

// TestBrokerRestart: the daemon reconnects, resubscribes and republishes its status,
// and requests sent after the restart are answered.
func TestBrokerRestart(t *testing.T) {
	mos := brokertest.StartMosquitto(t)
	a := startAppliance(t, mos.URL, "restart", softhsmtest.New(t, "restart"), options{})
	op := newOperator(t, mos.URL)
	root, _, _, _ := provisionCAs(t, op, a)

	mos.Stop()
	time.Sleep(500 * time.Millisecond)
	mos.Start(t)

	// A new observer sees the retained status again (mosquitto kept nothing).
	obs := mqtttest.StartWith(t, mqtt.Config{Broker: mos.URL, ClientID: "observer", AllowPlaintext: true,
		CleanSession: true, ConnectTimeout: 25 * time.Second}, mqtttest.Options{Watch: []string{a.dev.Topics().Status()}})
	if !obs.Wait(30*time.Second, func() bool {
		var st protocol.Status
		return json.Unmarshal(obs.Last(a.dev.Topics().Status()), &st) == nil && st.Online && st.ConnectedSlots == 2
	}) {
		t.Fatal("no online status with 2 connected slots after the broker restart")
	}

	// The operator's own session came back too; a request after the restart is answered,
	// on the device topic and on the CA topic (resubscribed).
	deadline := time.Now().Add(30 * time.Second)
	for !op.MQTT.Connected() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	ok[protocol.Status](t, op.call(a, protocol.CmdStatus, struct{}{}))
	next := time.Now().Add(time.Hour).UTC()
	id, p := op.envelope("", protocol.SignArgs{Kind: protocol.KindCRL, Number: "7", NextUpdate: &next})
	op.publish(a.dev.Topics().CASign(root.CAID), p)
	ok[protocol.SignResult](t, op.wait(id, 1, time.Minute))
}
