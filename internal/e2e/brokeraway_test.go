package e2e

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// TestReplyKeptWhileBrokerAway: a reply produced while the broker is down is sent
// when it is back. The broker keeps its state (persistence, SIGTERM), and the PKI a
// persistent session, so the reply reaches it once the appliance has sent it.
func TestReplyKeptWhileBrokerAway(t *testing.T) {
	brokerState := t.TempDir()
	mos := brokertest.StartMosquitto(t, "persistence true", "persistence_location "+brokerState+"/")
	var hold atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	trace := func(step string, _ time.Duration) {
		// The reply is recorded and about to be published: the broker goes now.
		if step == device.StepRecord && hold.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
	}
	a := startAppliance(t, mos.URL, "away", softhsmtest.New(t, "away"), options{trace: trace})
	op := newOperator(t, mos.URL)
	root := ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: a.hsmID, Slot: "01", Mode: "generate", KeyType: "p256", Label: "root"}))
	pki := mqtttest.StartWith(t, mqtt.Config{Broker: mos.URL, AllowPlaintext: true, ClientID: "pki-" + mqtttest.RandomID(),
		ConnectTimeout: 20 * time.Second}, mqtttest.Options{Name: "pki"})

	hold.Store(true)
	id, payload := pki.Request("", protocol.ProvisioningCertArgs{SlotID: root.SlotID,
		ProvisioningCert: string(pkitest.ProvisioningCert(t, "Away Root", 0))})
	if err := pki.Send(a.dev.Topics().Cmd(protocol.CmdSlotSelfSign), payload); err != nil {
		t.Fatal(err)
	}
	<-held
	mos.Terminate()
	for a.app.Client.Connected() {
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	time.Sleep(200 * time.Millisecond) // the publish fails meanwhile
	mos.Start(t)
	r, got := pki.Reply(id, 1, 60*time.Second)
	if !got {
		t.Fatal("the reply produced while the broker was away never arrived")
	}
	if !r.OK || r.Replayed {
		t.Fatalf("reply: ok=%v replayed=%v error=%+v", r.OK, r.Replayed, r.Error)
	}
	st := ok[protocol.Status](t, op.call(a, protocol.CmdStatus, struct{}{}))
	if st.Counters.Dropped != 0 {
		t.Errorf("dropped = %d", st.Counters.Dropped)
	}
}
