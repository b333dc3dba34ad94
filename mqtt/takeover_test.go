package mqtt

import (
	"sync"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
)

// takeovers records what a client reports, with the time of every connect.
type takeovers struct {
	mu       sync.Mutex
	reports  []Takeover
	connects []time.Time
}

func watch(c *Client) *takeovers {
	w := &takeovers{}
	c.OnTakeover(func(t Takeover) {
		w.mu.Lock()
		w.reports = append(w.reports, t)
		w.mu.Unlock()
	})
	c.OnConnect(func() {
		w.mu.Lock()
		w.connects = append(w.connects, time.Now())
		w.mu.Unlock()
	})
	return w
}

func (w *takeovers) snapshot() ([]Takeover, []time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Takeover(nil), w.reports...), append([]time.Time(nil), w.connects...)
}

// Two clients with one client id (two appliances cloned from one SD card) on a real
// mosquitto: each reports the takeover, and the reconnects back off.
func TestClientIDTakeoverIsReportedAndBacksOff(t *testing.T) {
	m := brokertest.StartMosquitto(t)
	a := newClient(t, m.URL, "iot-hsm-ihsm-clone")
	b := newClient(t, m.URL, "iot-hsm-ihsm-clone")
	wa, wb := watch(a), watch(b)
	start(t, a)
	start(t, b)

	eventually(t, 40*time.Second, "both clients report a takeover twice", func() bool {
		ra, _ := wa.snapshot()
		rb, _ := wb.snapshot()
		return len(ra) >= 2 && len(rb) >= 2
	})
	for name, w := range map[string]*takeovers{"a": wa, "b": wb} {
		reports, _ := w.snapshot()
		first, second := reports[0], reports[1]
		if first.ClientID != "iot-hsm-ihsm-clone" || first.Losses < takeoverThreshold || first.Backoff < takeoverFirstDelay {
			t.Errorf("%s: first report %+v", name, first)
		}
		if second.Losses <= first.Losses || second.Backoff <= first.Backoff {
			t.Errorf("%s: the back-off does not grow: %+v then %+v", name, first, second)
		}
	}
	// From the first report on, the two connect far less often than without
	// the back-off (one reconnect a second, or faster).
	_, ca := wa.snapshot()
	_, cb := wb.snapshot()
	n0 := len(ca) + len(cb)
	time.Sleep(6 * time.Second)
	_, ca = wa.snapshot()
	_, cb = wb.snapshot()
	if n := len(ca) + len(cb) - n0; n > 4 {
		t.Errorf("%d connects in 6s after the takeover was reported", n)
	}
}

// Two lost connections in a row (a broker restarted twice) are no takeover.
func TestBrokerRestartIsNoTakeover(t *testing.T) {
	m := brokertest.StartMosquitto(t)
	c := newClient(t, m.URL, "iot-hsm-ihsm-alone")
	w := watch(c)
	start(t, c)
	for range takeoverThreshold - 1 {
		m.Stop()
		m.Start(t)
		eventually(t, 20*time.Second, "reconnected", c.Connected)
	}
	if reports, _ := w.snapshot(); len(reports) != 0 {
		t.Fatalf("takeover reported after broker restarts: %+v", reports)
	}
}
