package daemon

import (
	"testing"

	"github.com/iot-hsm/iot-hsm/protocol"
)

func TestStatusLine(t *testing.T) {
	d := &daemon{}
	st := protocol.Status{Broker: "connected", ConnectedSlots: 2,
		HSMs:  []protocol.StatusHSM{{ID: "a", Present: true}, {ID: "b", Present: true}, {ID: "c"}},
		Slots: []protocol.StatusSlot{{State: "provisioned"}, {State: "provisioned"}, {State: "provisioned"}, {State: "key_ready"}}}
	if got, want := d.statusLine(st), "2/3 CA slots connected; broker up; 2/3 HSMs present"; got != want {
		t.Errorf("status line %q, want %q", got, want)
	}
	d.fault, d.note = "device wedged: x", "restart required for: mqtt"
	st = protocol.Status{Broker: "disconnected"}
	if got, want := d.statusLine(st), "no CA slot provisioned yet; broker down, retrying; 0/0 HSMs present; watchdog pings stopped: device wedged: x; restart required for: mqtt"; got != want {
		t.Errorf("status line %q, want %q", got, want)
	}
}
