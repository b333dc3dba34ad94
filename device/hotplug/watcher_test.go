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
	time.Sleep(400 * time.Millisecond)
	reasons, at := c.snapshot()
	if len(reasons) != 1 {
		t.Fatalf("%d OnChange calls for one burst, want 1: %q", len(reasons), reasons)
	}
	if d := at[0].Sub(last); d < 90*time.Millisecond {
		t.Errorf("OnChange %v after the burst's last event, want after the 100ms debounce", d)
	}
	if d := at[0].Sub(start); d > 700*time.Millisecond {
		t.Errorf("OnChange %v after the burst began, want well within 1s", d)
	}
	if !strings.Contains(reasons[0], "uevent: add "+ykDev) || !strings.Contains(reasons[0], "more") {
		t.Errorf("reason %q does not name the first event and the rest", reasons[0])
	}

	// Other devices: no rescan.
	for _, ev := range otherEvents {
		sendUE(parseOrFail(t, ev.msg))
	}
	time.Sleep(250 * time.Millisecond)
	if reasons, _ := c.snapshot(); len(reasons) != 1 {
		t.Fatalf("non-smart-card uevents caused OnChange: %q", reasons[1:])
	}

	// A dropped-events notice and a card removal each cause one more.
	sendUE(UEvent{Action: ActionOverflow})
	time.Sleep(250 * time.Millisecond)
	sendPC(ReaderEvent{Reader: "Virtual PCD 00 00"})
	time.Sleep(250 * time.Millisecond)
	reasons, _ = c.snapshot()
	if len(reasons) != 3 || !strings.Contains(reasons[1], "dropped") || !strings.Contains(reasons[2], "no card in Virtual PCD 00 00") {
		t.Fatalf("reasons %q", reasons)
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
	start := time.Now()
	for time.Since(start) < 700*time.Millisecond {
		sendPC(ReaderEvent{Reader: "R", Present: true})
		time.Sleep(20 * time.Millisecond)
	}
	reasons, at := c.snapshot()
	if len(reasons) == 0 {
		t.Fatal("no OnChange during 700ms of continuous events")
	}
	if d := at[0].Sub(start); d > 500*time.Millisecond {
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
	stop := runWatcher(t, w)
	time.Sleep(330 * time.Millisecond)
	stop()
	reasons, _ := c.snapshot()
	if len(reasons) < 3 || len(reasons) > 7 {
		t.Errorf("%d periodic rescans in 330ms at a 50ms interval: %q", len(reasons), reasons)
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
	time.Sleep(500 * time.Millisecond)
	cancel()
	wg.Wait()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if m := maxInFlight.Load(); m != 1 {
		t.Errorf("OnChange ran %d at once", m)
	}
	if n < 20 {
		t.Errorf("only %d OnChange calls; the test did not exercise much", n)
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
