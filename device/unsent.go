package device

import (
	"log/slog"
	"sync"
)

// maxUnsent bounds the replies kept while the broker is away.
const maxUnsent = 4096

// unsent keeps the messages that found the broker away, to send on reconnect: a
// reply is the only place a requester learns what was done.
type unsent struct {
	mu   sync.Mutex
	msgs []outMsg
}

// keepUnsent keeps a message whose publish failed while the broker is away; a full
// store drops it, counted in dropped. Retained messages are not kept: the status is
// published anew at every connect. A failure with the broker up is only logged: the
// session resends what it had in flight.
func (d *Device) keepUnsent(m outMsg, err error) {
	if m.retained || d.tr.Connected() {
		slog.Warn("publish failed", "topic", m.topic, "err", err)
		return
	}
	d.unsent.mu.Lock()
	kept := len(d.unsent.msgs) < maxUnsent
	if kept {
		d.unsent.msgs = append(d.unsent.msgs, m)
	}
	d.unsent.mu.Unlock()
	if !kept {
		d.dropped.Add(1)
		slog.Warn("broker away and too many replies waiting; message dropped", "topic", m.topic)
	}
}

// flushUnsent sends what was kept, after a reconnect; what fails again is kept again.
func (d *Device) flushUnsent() {
	d.unsent.mu.Lock()
	msgs := d.unsent.msgs
	d.unsent.msgs = nil
	d.unsent.mu.Unlock()
	if len(msgs) == 0 {
		return
	}
	slog.Info("sending the replies kept while the broker was away", "count", len(msgs))
	d.publishAll(msgs)
}
