package device

import (
	"fmt"
	"sync"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// EventBrokerTakeover is the event type of a suspected client-id takeover.
const EventBrokerTakeover = "broker.takeover"

// takeoverNote holds the takeover event until the session is up again: it is
// detected while the broker has just dropped the session, when nothing can be sent.
type takeoverNote struct {
	mu      sync.Mutex
	pending string
}

// BrokerTakeover is told by the transport that the broker keeps dropping the session
// right after it connects, the mark of another client using the same client id. The
// event goes out at the next connect, after the status document.
func (d *Device) BrokerTakeover(losses int, window, backoff time.Duration) {
	msg := fmt.Sprintf("the broker dropped this appliance's session %d times in a row within %s of connecting: "+
		"probably another appliance with device_id %s (a cloned SD card; give it its own device_id or regenerate "+
		"/etc/machine-id on it); reconnects back off, the next after %s", losses, window, d.topics.Device, backoff)
	d.takeover.mu.Lock()
	d.takeover.pending = msg
	d.takeover.mu.Unlock()
}

// publishTakeover sends the pending takeover event, if any.
func (d *Device) publishTakeover() {
	d.takeover.mu.Lock()
	msg := d.takeover.pending
	d.takeover.pending = ""
	d.takeover.mu.Unlock()
	if msg != "" {
		d.event(protocol.Event{Type: EventBrokerTakeover, Message: msg})
	}
}
