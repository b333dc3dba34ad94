package device

import (
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"time"
)

// ErrWedged is a loop of the device that stopped answering: a token worker inside one
// request far past its deadline, or a presence scan that does not return.
var ErrWedged = errors.New("wedged")

// scanLimit is how long one presence scan may take before grace starts counting; a
// scan re-initialises PKCS#11 modules at worst, which takes a second or two.
const scanLimit = 30 * time.Second

// liveness is what one loop is doing now, stamped by the loop itself. An idle loop
// (waiting for work) is responsive by definition; a busy one is responsive until its
// work overruns its limit.
type liveness struct {
	cur atomic.Pointer[activity]
}

type activity struct {
	what  string
	job   *job // nil for a presence scan
	since time.Time
	limit time.Duration
}

func (l *liveness) begin(j *job) {
	l.cur.Store(&activity{what: j.cmd, job: j, since: time.Now(), limit: j.deadline})
}

func (l *liveness) beginScan() {
	l.cur.Store(&activity{what: "HSM presence scan", since: time.Now(), limit: scanLimit})
}

func (l *liveness) end() { l.cur.Store(nil) }

func (l *liveness) current() *activity { return l.cur.Load() }

// overdue returns the activity when it has run past its limit plus grace.
func (l *liveness) overdue(now time.Time, grace time.Duration) *activity {
	a := l.cur.Load()
	if a == nil || now.Sub(a.since) <= a.limit+grace {
		return nil
	}
	return a
}

// Healthy reports whether the device's loops answer: no token worker has been inside
// one request for longer than the request's deadline plus grace, and the presence
// watch is not stuck in a scan. Token calls (cgo into a PKCS#11 module, PC/SC) cannot
// be interrupted, so a loop stuck in one stays stuck until the process restarts:
// this is what the watchdog asks before each ping.
func (d *Device) Healthy(grace time.Duration) error {
	now := time.Now()
	for _, w := range d.snapshotWorkers() {
		if a := w.live.overdue(now, grace); a != nil {
			return fmt.Errorf("%w: the worker of %s is stuck in %s (request %s) for %s",
				ErrWedged, nameOr(w.id, "the device"), a.what, a.job.req.ID, now.Sub(a.since).Round(time.Second))
		}
	}
	if a := d.watchLive.overdue(now, grace); a != nil {
		return fmt.Errorf("%w: the %s is stuck for %s", ErrWedged, a.what, now.Sub(a.since).Round(time.Second))
	}
	return nil
}

// snapshotWorkers returns the workers in id order.
func (d *Device) snapshotWorkers() []*worker {
	d.mu.Lock()
	out := make([]*worker, 0, len(d.workers))
	for _, w := range d.workers {
		out = append(out, w)
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}
