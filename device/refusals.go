package device

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
)

// refusalWindow is how often refusals of unauthenticated or stale requests reach the
// audit trail: the first of a window at once, the rest as one record with a count at
// its end. One record (and one fsync) per forged message would let anyone who can
// publish grow the trail and wear the SD card without bound.
const refusalWindow = time.Minute

// refusals samples refusals into the audit trail.
type refusals struct {
	mu      sync.Mutex
	open    bool         // a window is running: its first refusal is recorded
	count   int          // refusals since then, not yet recorded
	last    audit.Record // the latest of them, as the sample
	started time.Time
	timer   *time.Timer
}

// note records r now if no window is running, otherwise counts it for the window's
// closing record.
func (d *Device) noteRefusal(r audit.Record) {
	if d.opts.Audit == nil {
		return
	}
	rf := &d.refused
	rf.mu.Lock()
	if rf.open {
		rf.count++
		rf.last = r
		rf.mu.Unlock()
		return
	}
	rf.open, rf.started = true, d.opts.Now()
	rf.timer = time.AfterFunc(refusalWindow, d.flushRefusals)
	rf.mu.Unlock()
	d.appendAudit(r)
}

// flushRefusals closes the window: one record stands for the refusals counted in it.
func (d *Device) flushRefusals() {
	rf := &d.refused
	rf.mu.Lock()
	n, r, since := rf.count, rf.last, rf.started
	rf.open, rf.count, rf.last = false, 0, audit.Record{}
	if rf.timer != nil {
		rf.timer.Stop()
	}
	rf.mu.Unlock()
	if n == 0 {
		return
	}
	r.Note = fmt.Sprintf("%d more requests refused since %s; this is the last of them", n, since.UTC().Format(time.RFC3339))
	d.appendAudit(r)
}

func (d *Device) appendAudit(r audit.Record) {
	if _, err := d.opts.Audit.Append(r); err != nil {
		slog.Error("audit trail", "err", err)
	}
}
