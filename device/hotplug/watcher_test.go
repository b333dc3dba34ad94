package hotplug

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSources feeds a Watcher from channels the test controls.
type fakeSources struct {
	ue chan UEvent
	pc chan ReaderEvent
}

func newFakeSources() *fakeSources {
	return &fakeSources{ue: make(chan UEvent), pc: make(chan ReaderEvent)}
}

// attach makes w read from s; like the real sources, the channels are
// closed when ctx ends, and nothing is sent after that.
func (s *fakeSources) attach(w *Watcher) (sendUE func(UEvent) bool, sendPC func(ReaderEvent) bool) {
	var (
		mu  sync.Mutex
		ctx context.Context
	)
	ready := make(chan struct{})
	w.uevents = func(c context.Context) (<-chan UEvent, error) {
		mu.Lock()
		ctx = c
		mu.Unlock()
		close(ready)
		out := make(chan UEvent)
		go func() {
			defer close(out)
			for {
				select {
				case e := <-s.ue:
					select {
					case out <- e:
					case <-c.Done():
						return
					}
				case <-c.Done():
					return
				}
			}
		}()
		return out, nil
	}
	w.pcsc = func(c context.Context, _ *slog.Logger) (<-chan ReaderEvent, error) {
		out := make(chan ReaderEvent)
		go func() {
			defer close(out)
			for {
				select {
				case e := <-s.pc:
					select {
					case out <- e:
					case <-c.Done():
						return
					}
				case <-c.Done():
					return
				}
			}
		}()
		return out, nil
	}
	done := func() <-chan struct{} {
		<-ready
		mu.Lock()
		defer mu.Unlock()
		return ctx.Done()
	}
	sendUE = func(e UEvent) bool {
		select {
		case s.ue <- e:
			return true
		case <-done():
			return false
		}
	}
	sendPC = func(e ReaderEvent) bool {
		select {
		case s.pc <- e:
			return true
		case <-done():
			return false
		}
	}
	return sendUE, sendPC
}

// calls records OnChange calls.
type calls struct {
	mu      sync.Mutex
	reasons []string
	at      []time.Time
}

func (c *calls) onChange(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reasons = append(c.reasons, reason)
	c.at = append(c.at, time.Now())
}

// waitFor waits until OnChange was called n times and returns the calls so far.
func (c *calls) waitFor(t *testing.T, n int) ([]string, []time.Time) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		reasons, at := c.snapshot()
		if len(reasons) >= n {
			return reasons, at
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d OnChange calls within 5s, want %d: %q", len(reasons), n, reasons)
		}
		time.Sleep(time.Millisecond)
	}
}

func (c *calls) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.reasons)
}

func (c *calls) snapshot() ([]string, []time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.reasons...), append([]time.Time(nil), c.at...)
}

func runWatcher(t *testing.T, w *Watcher) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("Run did not return within 3s of cancel")
		}
	}
}

func parseOrFail(t *testing.T, msg string) UEvent {
	t.Helper()
	e, err := ParseUEvent([]byte(msg))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestWatcherDebounce: a YubiKey plug (a dozen uevents, then its PC/SC
// reader) is one OnChange; uevents of other devices are none.
func TestWatcherDebounce(t *testing.T) {
	base := goroutines()
	var c calls
	w := &Watcher{OnChange: c.onChange, Debounce: 100 * time.Millisecond, Interval: time.Hour,
		Logger: slog.New(&logRecorder{})}
	sendUE, sendPC := newFakeSources().attach(w)
	stop := runWatcher(t, w)

	start := time.Now()
	for _, ev := range yubikeyPlug {
		sendUE(parseOrFail(t, ev.msg))
		time.Sleep(5 * time.Millisecond)
	}
	sendPC(ReaderEvent{Reader: "Yubico YubiKey OTP+FIDO+CCID 00 00", Present: true})
	last := time.Now()
	reasons, at := c.waitFor(t, 1)
	if d := at[0].Sub(last); d < 90*time.Millisecond {
		t.Errorf("OnChange %v after the burst's last event, want after the 100ms debounce", d)
	}
	if d := at[0].Sub(start); d > 700*time.Millisecond {
		t.Errorf("OnChange %v after the burst began, want well within 1s", d)
	}
	if !strings.Contains(reasons[0], "uevent: add "+ykDev) || !strings.Contains(reasons[0], "more") {
		t.Errorf("reason %q does not name the first event and the rest", reasons[0])
	}

	// Other devices: no rescan. The dropped-events notice after them comes through
	// the same source, so the next call is its alone if they noted nothing (and
	// the burst is not called twice).
	for _, ev := range otherEvents {
		sendUE(parseOrFail(t, ev.msg))
	}
	sendUE(UEvent{Action: ActionOverflow})
	reasons, _ = c.waitFor(t, 2)
	if reasons[1] != "uevent: kernel dropped events" {
		t.Fatalf("second OnChange %q, want the dropped events alone: %q", reasons[1], reasons)
	}
	// A card removal causes one more.
	sendPC(ReaderEvent{Reader: "Virtual PCD 00 00"})
	reasons, _ = c.waitFor(t, 3)
	if reasons[2] != "pcsc: no card in Virtual PCD 00 00" {
		t.Fatalf("third OnChange %q, want the card removal alone", reasons[2])
	}

	stop()
	settleGoroutines(t, base)
}

// TestWatcherMaxWait: a never-ending stream of events cannot hold the
// rescan back for more than a few debounce periods.
func TestWatcherMaxWait(t *testing.T) {
	base := goroutines()
	var c calls
	w := &Watcher{OnChange: c.onChange, Debounce: 100 * time.Millisecond, Interval: time.Hour,
		Logger: slog.New(&logRecorder{})}
	_, sendPC := newFakeSources().attach(w)
	stop := runWatcher(t, w)
	// Events every 20ms, well inside the debounce, until the first rescan.
	start := time.Now()
	for c.count() == 0 {
		if time.Since(start) > 5*time.Second {
			t.Fatal("no OnChange during 5s of continuous events")
		}
		sendPC(ReaderEvent{Reader: "R", Present: true})
		time.Sleep(20 * time.Millisecond)
	}
	_, at := c.snapshot()
	// Due after 4x100ms; an unbounded debounce would wait for the events to stop
	// (never, here). The margin is for a loaded machine.
	if d := at[0].Sub(start); d > 2*time.Second {
		t.Errorf("first OnChange after %v, want by 4x100ms", d)
	}
	stop()
	settleGoroutines(t, base)
}

// TestWatcherInterval: without any event source at all, the periodic
// rescan still runs, and failed sources are logged.
func TestWatcherInterval(t *testing.T) {
	base := goroutines()
	var c calls
	rec := &logRecorder{}
	w := &Watcher{OnChange: c.onChange, Interval: 50 * time.Millisecond, Logger: slog.New(rec)}
	w.uevents = func(context.Context) (<-chan UEvent, error) { return nil, errors.New("no netlink for you") }
	w.pcsc = func(context.Context, *slog.Logger) (<-chan ReaderEvent, error) { return nil, errNoPCSC }
	start := time.Now()
	stop := runWatcher(t, w)
	reasons, at := c.waitFor(t, 3)
	stop()
	// Each rescan an interval after the last (timers may fire a little early).
	for i, prev := range append([]time.Time{start}, at[:2]...) {
		if gap := at[i].Sub(prev); gap < 45*time.Millisecond {
			t.Errorf("periodic rescan %d came %v after the one before, want the 50ms interval", i+1, gap)
		}
	}
	for _, r := range reasons {
		if r != "periodic rescan" {
			t.Errorf("reason %q, want periodic rescan", r)
		}
	}
	if rec.count(slog.LevelWarn, "uevents unavailable") != 1 || rec.count(slog.LevelWarn, "PC/SC watch unavailable") != 1 {
		t.Error("failed sources were not logged once each")
	}
	settleGoroutines(t, base)

	if err := (&Watcher{}).Run(context.Background()); err == nil {
		t.Error("Run without OnChange did not fail")
	}
}

// TestWatcherNeverConcurrent floods both sources from several goroutines
// with a tiny debounce and interval while OnChange is slow: OnChange must
// never overlap itself. The unguarded counter also lets -race catch it.
func TestWatcherNeverConcurrent(t *testing.T) {
	base := goroutines()
	var (
		inFlight, maxInFlight atomic.Int32
		n                     int // deliberately unsynchronised
		done                  atomic.Int32
	)
	w := &Watcher{
		OnChange: func(string) {
			cur := inFlight.Add(1)
			for {
				m := maxInFlight.Load()
				if cur <= m || maxInFlight.CompareAndSwap(m, cur) {
					break
				}
			}
			n++
			time.Sleep(3 * time.Millisecond)
			inFlight.Add(-1)
			done.Add(1)
		},
		Debounce: time.Millisecond,
		Interval: 2 * time.Millisecond,
		Logger:   slog.New(&logRecorder{}),
	}
	sendUE, sendPC := newFakeSources().attach(w)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	yk := parseOrFail(t, yubikeyPlug[0].msg)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := 0; ; j++ {
				var ok bool
				if (i+j)%2 == 0 {
					ok = sendUE(yk)
				} else {
					ok = sendPC(ReaderEvent{Reader: "R", Present: j%3 == 0})
				}
				if !ok {
					return
				}
				time.Sleep(time.Duration(j%3) * time.Millisecond)
			}
		})
	}
	for deadline := time.Now().Add(10 * time.Second); done.Load() < 50; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d OnChange calls in 10s of flooding", done.Load())
		}
	}
	cancel()
	wg.Wait()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if m := maxInFlight.Load(); m != 1 {
		t.Errorf("OnChange ran %d at once", m)
	}
	if n < 50 {
		t.Errorf("%d OnChange calls counted unguarded, %d guarded", n, done.Load())
	}
	settleGoroutines(t, base)
}

// TestWatcherRealSources is the detection target end to end: real uevent
// socket, real pcscd with vpcd; a card plugged or pulled reaches OnChange
// within 1 s.
func TestWatcherRealSources(t *testing.T) {
	needPCSCD(t)
	base := goroutines()
	changes := make(chan string, 100)
	w := &Watcher{OnChange: func(r string) { changes <- r }, Interval: time.Hour}
	stop := runWatcher(t, w)
	// The first rescan reports the readers' current state.
	select {
	case r := <-changes:
		t.Logf("startup: %s", r)
	case <-time.After(5 * time.Second):
		t.Fatal("no OnChange for the readers' initial state")
	}
	waitChange := func(what string) {
		t.Helper()
		start := time.Now()
		for {
			select {
			case r := <-changes:
				if !strings.Contains(r, what) {
					continue
				}
				t.Logf("%v: %s", time.Since(start).Round(time.Millisecond), r)
				if d := time.Since(start); d > time.Second {
					t.Errorf("detection took %v, target 1s", d)
				}
				return
			case <-time.After(2 * time.Second):
				t.Fatalf("no OnChange with %q within 2s", what)
			}
		}
	}
	card := plugCard(t)
	waitChange("card in " + vpcdReader)
	card.unplug()
	waitChange("no card in " + vpcdReader)
	stop()
	settleGoroutines(t, base)
}
