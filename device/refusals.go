package device

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
)

// refusalWindow is how often refusals of unauthenticated or stale requests reach the
// audit trail: per result code, the first of a window at once, the rest as one
// record with their count at its end. One record (and one fsync) per forged message
// would let anyone who can publish grow the trail and wear the SD card without bound.
const refusalWindow = time.Minute

// refusals samples refusals into the audit trail, one window per result code.
type refusals struct {
	mu      sync.Mutex
	windows map[string]*refusalWindowState
}

type refusalWindowState struct {
	count   int          // refusals since the window opened, not yet recorded
	last    audit.Record // the latest of them, as the sample
	started time.Time
	timer   *time.Timer
}

// noteRefusal records r now if no window of its result is open, otherwise counts it
// for the window's closing record.
func (d *Device) noteRefusal(r audit.Record) {
	if d.opts.Audit == nil {
		return
	}
	rf := &d.refused
	rf.mu.Lock()
	if w, open := rf.windows[r.Result]; open {
		w.count++
		w.last = r
		rf.mu.Unlock()
		return
	}
	if rf.windows == nil {
		rf.windows = map[string]*refusalWindowState{}
	}
	code := r.Result
	rf.windows[code] = &refusalWindowState{started: d.opts.Now(),
		timer: time.AfterFunc(refusalWindow, func() { d.closeRefusals(code) })}
	rf.mu.Unlock()
	d.appendAudit(r)
}

// closeRefusals closes the window of one result code: one record stands for the
// refusals counted in it.
func (d *Device) closeRefusals(code string) {
	rf := &d.refused
	rf.mu.Lock()
	w := rf.windows[code]
	delete(rf.windows, code)
	rf.mu.Unlock()
	if w == nil {
		return
	}
	w.timer.Stop()
	if w.count == 0 {
		return
	}
	r := w.last
	r.Note = fmt.Sprintf("%d more requests refused %s since %s; this is the last of them",
		w.count, code, w.started.UTC().Format(time.RFC3339))
	d.appendAudit(r)
}

// flushRefusals closes every window (at shutdown).
func (d *Device) flushRefusals() {
	d.refused.mu.Lock()
	var codes []string
	for c := range d.refused.windows {
		codes = append(codes, c)
	}
	d.refused.mu.Unlock()
	for _, c := range codes {
		d.closeRefusals(c)
	}
}

func (d *Device) appendAudit(r audit.Record) {
	if _, err := d.opts.Audit.Append(r); err != nil {
		slog.Error("audit trail", "err", err)
	}
}
