package mqtt

import (
	"sync"
	"time"
)

// MQTT 3.1.1 gives no reason when the broker drops a session, so a client-id
// takeover (a second client connecting with the same id, typically a second
// appliance cloned from the same SD card) shows only as connections that are lost
// right after they came up, again and again. takeoverWatch counts those and sets
// the back-off that stops the two from kicking each other off every few seconds.
const (
	takeoverWindow     = 10 * time.Second // a session shorter than this counts
	takeoverThreshold  = 3                // short sessions in a row that raise the alarm
	takeoverFirstDelay = 2 * time.Second
	takeoverMaxDelay   = 2 * time.Minute
)

// Takeover describes a suspected client-id takeover.
type Takeover struct {
	ClientID string
	// Losses is the number of connections in a row lost within Window of connecting.
	Losses int
	Window time.Duration
	// Backoff is the wait added before the next reconnect.
	Backoff time.Duration
}

type takeoverWatch struct {
	mu          sync.Mutex
	connectedAt time.Time
	short       int
}

func (w *takeoverWatch) up(now time.Time) {
	w.mu.Lock()
	w.connectedAt = now
	w.mu.Unlock()
}

// down counts a lost connection and says whether the pattern is a takeover.
func (w *takeoverWatch) down(now time.Time) (losses int, suspected bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.connectedAt.IsZero() && now.Sub(w.connectedAt) < takeoverWindow {
		w.short++
	} else {
		w.short = 0
	}
	return w.short, w.short >= takeoverThreshold
}

// delay is the wait before the next reconnect: doubling from takeoverFirstDelay
// with each short session past the threshold, bounded by takeoverMaxDelay, and
// nothing once a session lasted.
func (w *takeoverWatch) delay() time.Duration {
	w.mu.Lock()
	n := w.short
	w.mu.Unlock()
	if n < takeoverThreshold {
		return 0
	}
	d := takeoverFirstDelay
	for i := takeoverThreshold; i < n && d < takeoverMaxDelay; i++ {
		d *= 2
	}
	return min(d, takeoverMaxDelay)
}

// OnTakeover sets f to be called, besides the error logged, every time a connection
// is lost that makes the pattern of a client-id takeover (see Takeover). It runs on
// a goroutine of paho's while the client is disconnected, so it must not Publish;
// it must return promptly.
func (c *Client) OnTakeover(f func(Takeover)) {
	c.mu.Lock()
	c.onTakeover = f
	c.mu.Unlock()
}

// checkTakeover is called on every lost connection.
func (c *Client) checkTakeover() {
	losses, suspected := c.takeover.down(time.Now())
	if !suspected {
		return
	}
	t := Takeover{ClientID: c.cfg.ClientID, Losses: losses, Window: takeoverWindow, Backoff: c.takeover.delay()}
	c.log.Error("the broker keeps dropping this session right after it connects: another client is probably "+
		"connecting with the same client id, most likely a second appliance with the same device_id (a cloned SD card); "+
		"give each appliance its own device_id (or mqtt client_id) or regenerate /etc/machine-id on the clone",
		"losses_in_a_row", losses, "within", takeoverWindow, "retry_in", t.Backoff)
	c.mu.Lock()
	f := c.onTakeover
	c.mu.Unlock()
	if f != nil {
		f(t)
	}
}

// reconnectPause is paho's OnReconnecting: it waits out the takeover back-off
// before each reconnect attempt, or until Close.
func (c *Client) reconnectPause() {
	c.log.Debug("reconnecting to the broker")
	d := c.takeover.delay()
	if d == 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.closing:
	}
}
