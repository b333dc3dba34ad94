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
	listen := w.uevents
	if listen == nil {
		listen = ListenUEvents
	}
	watch := w.pcsc
	if watch == nil {
		watch = func(ctx context.Context, log *slog.Logger) (<-chan ReaderEvent, error) {
			return watchPCSC(ctx, log, scardOpen, pcscRetry, pcscPoll)
		}
	}

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
		// of theirs outlives Run. (Ranging over a nil channel would block
		// forever: a source that failed to start has none.)
		if ue != nil {
			for range ue {
			}
		}
		if pc != nil {
			for range pc {
			}
		}
	}()

	var (
		reasons  []string
		dropped  int
		first    time.Time
		settle   = time.NewTimer(time.Hour)
		periodic = time.NewTimer(interval)
	)
	settle.Stop()
	defer settle.Stop()
	defer periodic.Stop()

	note := func(reason string) {
		now := time.Now()
		if len(reasons) == 0 && dropped == 0 {
			first = now
		}
		if len(reasons) < maxReasons {
			reasons = append(reasons, reason)
		} else {
			dropped++
		}
		deadline := now.Add(debounce)
		if latest := first.Add(maxWaitFactor * debounce); deadline.After(latest) {
			deadline = latest
		}
		settle.Reset(time.Until(deadline))
	}
	fire := func(extra string) {
		if extra != "" {
			reasons = append(reasons, extra)
		}
		reason := strings.Join(reasons, "; ")
		if dropped > 0 {
			reason += fmt.Sprintf("; and %d more", dropped)
		}
		reasons, dropped = reasons[:0], 0
		settle.Stop()
		log.Debug("hotplug: rescan", "reason", reason)
		w.OnChange(reason)
		// Counted from the last rescan: a device that just rescanned
		// because of an event does not need the periodic one right away.
		periodic.Reset(interval)
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-ue:
			if !ok {
				if ctx.Err() == nil {
					log.Warn("hotplug: kernel uevent listener stopped")
				}
				ue = nil
				continue
			}
			switch {
			case ev.Action == ActionOverflow:
				note("uevent: kernel dropped events")
			case ev.SmartCard():
				note("uevent: " + ev.Action + " " + ev.DevPath)
			}
		case ev, ok := <-pc:
			if !ok {
				pc = nil
				continue
			}
			switch {
			case ev.Removed:
				note("pcsc: " + ev.Reader + " removed")
			case ev.Present:
				note("pcsc: card in " + ev.Reader)
			default:
				note("pcsc: no card in " + ev.Reader)
			}
		case <-settle.C:
			fire("")
		case <-periodic.C:
			fire("periodic rescan")
		}
	}
}
