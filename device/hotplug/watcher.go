package hotplug

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

const (
	defaultDebounce = 150 * time.Millisecond
	defaultInterval = 10 * time.Second
	// maxWaitFactor bounds how long a continuous stream of events can hold
	// a rescan back: at most this many Debounce periods after the first
	// event of a burst, so the 1 s detection target holds even while the
	// kernel is still announcing the hid/hidraw children of a new key.
	maxWaitFactor = 4
	// maxReasons keeps OnChange's reason readable for big bursts.
	maxReasons = 4
)

// Watcher merges kernel uevents and PC/SC changes into debounced calls to
// OnChange, so the device rescans its HSMs soon after a token is plugged or
// pulled, plus a slow periodic rescan that catches whatever the event
// sources missed.
type Watcher struct {
	// OnChange is called from Run's goroutine, never concurrently; events
	// arriving meanwhile are merged into the next call. reason says what
	// triggered it, for the log.
	OnChange func(reason string)
	// Debounce is how long to wait for an event burst to end (default
	// 150ms). One USB plug is a dozen uevents followed by a PC/SC reader
	// and card event.
	Debounce time.Duration
	// Interval is the periodic rescan, counted from the last OnChange
	// (default 10s).
	Interval time.Duration
	Logger   *slog.Logger

	// Event sources; nil means the real ones. Tests replace them.
	uevents func(context.Context) (<-chan UEvent, error)
	pcsc    func(context.Context, *slog.Logger) (<-chan ReaderEvent, error)
}

// Run watches until ctx ends and then returns nil, after its sources have
// stopped. A source that cannot start (no permission for the netlink
// socket, built without cgo) is logged and the others keep working; pcscd
// not running is not such a failure, since WatchPCSC keeps retrying.
func (w *Watcher) Run(ctx context.Context) error {
	if w.OnChange == nil {
		return errors.New("hotplug: Watcher.OnChange is nil")
	}
	log := w.Logger
	if log == nil {
		log = slog.Default()
	}
	debounce := w.Debounce
	if debounce <= 0 {
		debounce = defaultDebounce
	}
	interval := w.Interval
	if interval <= 0 {
		interval = defaultInterval
	}
	listen, watch := w.sources()

	// The sources get their own context so that Run can stop them and wait
	// for their channels to close whichever way it returns.
	srcCtx, stopSources := context.WithCancel(ctx)
	ue, err := listen(srcCtx)
	if err != nil {
		log.Warn("hotplug: kernel uevents unavailable, relying on PC/SC and periodic rescan", "err", err)
	}
	pc, err := watch(srcCtx, log)
	if err != nil {
		log.Warn("hotplug: PC/SC watch unavailable, relying on uevents and periodic rescan", "err", err)
	}
	defer func() {
		stopSources()
		// Drain until the sources close their channels, so no goroutine
		// of theirs outlives Run.
		drain(ue)
		drain(pc)
	}()

	d := newDebouncer(w.OnChange, log, debounce, interval)
	defer d.stop()
	d.watch(ctx, ue, pc)
	return nil
}

// sources returns the event sources, the real ones unless a test set them.
func (w *Watcher) sources() (
	listen func(context.Context) (<-chan UEvent, error),
	watch func(context.Context, *slog.Logger) (<-chan ReaderEvent, error),
) {
	listen = w.uevents
	if listen == nil {
		listen = ListenUEvents
	}
	watch = w.pcsc
	if watch == nil {
		watch = func(ctx context.Context, log *slog.Logger) (<-chan ReaderEvent, error) {
			return watchPCSC(ctx, log, scardOpen, pcscRetry, pcscPoll)
		}
	}
	return listen, watch
}

// drain reads ch until it is closed. A source that failed to start has a
// nil channel, and ranging over that would block forever.
func drain[T any](ch <-chan T) {
	if ch == nil {
		return
	}
	for range ch {
	}
}

// debouncer collects the reasons of an event burst and calls onChange once
// the burst has settled, or when the periodic rescan is due.
type debouncer struct {
	onChange           func(reason string)
	log                *slog.Logger
	debounce, interval time.Duration

	reasons  []string
	dropped  int
	first    time.Time // first event of the current burst
	settle   *time.Timer
	periodic *time.Timer
}

func newDebouncer(onChange func(string), log *slog.Logger, debounce, interval time.Duration) *debouncer {
	d := &debouncer{
		onChange: onChange,
		log:      log,
		debounce: debounce,
		interval: interval,
		settle:   time.NewTimer(time.Hour),
		periodic: time.NewTimer(interval),
	}
	d.settle.Stop()
	return d
}

func (d *debouncer) stop() {
	d.periodic.Stop()
	d.settle.Stop()
}

// watch feeds the sources' events to the debouncer until ctx ends. A source
// whose channel closes is set to nil so that its case never fires again.
func (d *debouncer) watch(ctx context.Context, ue <-chan UEvent, pc <-chan ReaderEvent) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-ue:
			if !ok {
				if ctx.Err() == nil {
					d.log.Warn("hotplug: kernel uevent listener stopped")
				}
				ue = nil
				continue
			}
			if reason, ok := ueventReason(ev); ok {
				d.note(reason)
			}
		case ev, ok := <-pc:
			if !ok {
				pc = nil
				continue
			}
			d.note(readerReason(ev))
		case <-d.settle.C:
			d.fire("")
		case <-d.periodic.C:
			d.fire("periodic rescan")
		}
	}
}

// ueventReason says why ev calls for a rescan; ok is false for uevents of
// devices that cannot be a token.
func ueventReason(ev UEvent) (reason string, ok bool) {
	switch {
	case ev.Action == ActionOverflow:
		return "uevent: kernel dropped events", true
	case ev.SmartCard():
		return "uevent: " + ev.Action + " " + ev.DevPath, true
	}
	return "", false
}

func readerReason(ev ReaderEvent) string {
	switch {
	case ev.Removed:
		return "pcsc: " + ev.Reader + " removed"
	case ev.Present:
		return "pcsc: card in " + ev.Reader
	default:
		return "pcsc: no card in " + ev.Reader
	}
}

// note records an event and (re)arms the settle timer: Debounce after this
// event, but no later than maxWaitFactor Debounce periods after the first
// event of the burst.
func (d *debouncer) note(reason string) {
	now := time.Now()
	if len(d.reasons) == 0 && d.dropped == 0 {
		d.first = now
	}
	if len(d.reasons) < maxReasons {
		d.reasons = append(d.reasons, reason)
	} else {
		d.dropped++
	}
	deadline := now.Add(d.debounce)
	if latest := d.first.Add(maxWaitFactor * d.debounce); deadline.After(latest) {
		deadline = latest
	}
	d.settle.Reset(time.Until(deadline))
}

// fire calls onChange with the collected reasons (plus extra, if any) and
// starts a new burst.
func (d *debouncer) fire(extra string) {
	if extra != "" {
		d.reasons = append(d.reasons, extra)
	}
	reason := strings.Join(d.reasons, "; ")
	if d.dropped > 0 {
		reason += fmt.Sprintf("; and %d more", d.dropped)
	}
	d.reasons, d.dropped = d.reasons[:0], 0
	d.settle.Stop()
	d.log.Debug("hotplug: rescan", "reason", reason)
	d.onChange(reason)
	// Counted from the last rescan: a device that just rescanned
	// because of an event does not need the periodic one right away.
	d.periodic.Reset(d.interval)
}
