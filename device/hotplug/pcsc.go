package hotplug

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"
)

// ReaderEvent is a change seen through pcscd.
type ReaderEvent struct {
	Reader  string
	Present bool // a card is in the reader
	Removed bool // the reader itself is gone (or pcscd went away)
}

// pnpReader is pcsc-lite's pseudo reader: listing it in
// SCardGetStatusChange makes the call return when readers are added or
// removed. pcsc-lite keeps the number of readers in the high 16 bits of its
// event state, so feeding that state back as the current state catches
// changes that happen between two calls.
const pnpReader = `\\?PnP?\Notification`

// SCARD_STATE_* bits (pcsclite.h). The high 16 bits of a real reader's event
// state count card insertions and removals.
const (
	stateUnaware  = 0x0000
	stateChanged  = 0x0002
	stateUnknown  = 0x0004
	statePresent  = 0x0020
	stateExclusiv = 0x0080
	stateMute     = 0x0200
	stateCountSft = 16
)

// pcscRetry is how often WatchPCSC tries to reach pcscd when it is not
// running.
const pcscRetry = 3 * time.Second

// pcscPoll bounds each SCardGetStatusChange. pcsc-lite before 2.3 counts
// readers for the PnP pseudo reader only from the start of each call, so a
// reader added between our SCardListReaders and that start is not seen
// until something else changes; relisting after pcscPoll at the latest
// bounds how late such a reader is reported. pcsc-lite 2.3 and later
// report it at once through the PnP event counter we feed back.
const pcscPoll = time.Second

var (
	errNoPCSC        = errors.New("hotplug: built without cgo, no PC/SC support")
	errUnknownReader = errors.New("pcsc: unknown reader") // SCARD_E_UNKNOWN_READER
	errTimeout       = errors.New("pcsc: timeout")        // SCARD_E_TIMEOUT
)

// readerState is the Go side of one SCARD_READERSTATE.
type readerState struct {
	name    string
	current uint32 // what we believe; pcsc-lite returns when it differs
	event   uint32 // what pcsc-lite reported
}

// scardConn is one pcsc-lite context (see scard_cgo.go). It is an interface
// so the watch loop can be tested against a scripted pcscd.
type scardConn interface {
	listReaders() ([]string, error)
	// getStatusChange blocks until a state differs from its current value
	// or cancel is called; errUnknownReader if a reader is not known,
	// errTimeout if nothing changed within timeout.
	getStatusChange(states []readerState, timeout time.Duration) error
	cancel()
	release()
}

// scardOpen connects to pcscd; nil when built without cgo.
var scardOpen func() (scardConn, error)

// WatchPCSC reports PC/SC reader and card changes: one event per reader
// when a connection to pcscd is made (its current state), then one per card
// insertion or removal and per reader added or removed. When pcscd is not
// running or goes away it retries every few seconds, logging once through
// slog.Default; the channel is closed only when ctx ends.
func WatchPCSC(ctx context.Context) (<-chan ReaderEvent, error) {
	return watchPCSC(ctx, slog.Default(), scardOpen, pcscRetry, pcscPoll)
}

func watchPCSC(ctx context.Context, log *slog.Logger, open func() (scardConn, error), retry, poll time.Duration) (<-chan ReaderEvent, error) {
	if open == nil {
		return nil, errNoPCSC
	}
	ch := make(chan ReaderEvent, 16)
	w := &pcscWatch{ctx: ctx, log: log, out: ch, poll: poll}
	go func() {
		defer close(ch)
		w.run(open, retry)
	}()
	return ch, nil
}

type pcscWatch struct {
	ctx  context.Context
	log  *slog.Logger
	out  chan<- ReaderEvent
	poll time.Duration // longest wait in one SCardGetStatusChange
}

// readerInfo is what was last reported for a reader, so that state bits
// that do not matter (in use, exclusive: set whenever piv-go opens the card
// during the rescan we trigger) do not produce events.
type readerInfo struct {
	reported bool
	present  bool
	count    uint32
}

func (w *pcscWatch) send(ev ReaderEvent) bool {
	select {
	case w.out <- ev:
		return true
	case <-w.ctx.Done():
		return false
	}
}

func (w *pcscWatch) run(open func() (scardConn, error), retry time.Duration) {
	// quiet is set after the first failure is logged so that a missing pcscd
	// does not fill the log every few seconds.
	quiet := false
	for w.ctx.Err() == nil {
		conn, err := open()
		if err != nil {
			if !quiet {
				w.log.Warn("hotplug: cannot reach pcscd, retrying", "err", err, "every", retry)
				quiet = true
			} else {
				w.log.Debug("hotplug: pcscd still unreachable", "err", err)
			}
			if !sleepCtx(w.ctx, retry) {
				return
			}
			continue
		}
		if quiet {
			w.log.Info("hotplug: connected to pcscd")
			quiet = false
		}
		known := map[string]*readerInfo{}
		err = w.session(conn, known)
		conn.release()
		if w.ctx.Err() != nil {
			return
		}
		w.log.Warn("hotplug: lost pcscd, retrying", "err", err, "every", retry)
		quiet = true
		// Whatever pcscd knew is gone with it: tell the consumer so the
		// HSMs behind these readers are rescanned (and found offline).
		for _, name := range sortedKeys(known) {
			if !w.send(ReaderEvent{Reader: name, Removed: true}) {
				return
			}
		}
		if !sleepCtx(w.ctx, retry) {
			return
		}
	}
}

// session watches one pcsc-lite context until it fails or ctx ends. A
// blocked SCardGetStatusChange is woken by SCardCancel from a goroutine
// started on ctx's end; SCardCancel does nothing unless the call is already
// blocked, so it is repeated until the session has returned.
func (w *pcscWatch) session(conn scardConn, known map[string]*readerInfo) error {
	done := make(chan struct{})
	canceller := make(chan struct{})
	stop := context.AfterFunc(w.ctx, func() {
		defer close(canceller)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			conn.cancel()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	err := w.loop(conn, known)
	close(done)
	if !stop() {
		<-canceller
	}
	return err
}

func (w *pcscWatch) loop(conn scardConn, known map[string]*readerInfo) error {
	// The PnP pseudo reader comes first; a new reader starts unaware so
	// that the next call returns at once with its state.
	states := []readerState{{name: pnpReader, current: stateUnaware}}
	for {
		// pcsc-lite 1.9 counts readers for the PnP pseudo reader only from
		// the start of each SCardGetStatusChange call, so a reader added
		// while we were busy (sending to a slow consumer) would go unnoticed
		// until the next change. Listing before every call narrows that
		// window to the gap between the list and the call, and the poll
		// timeout closes what is left.
		names, err := conn.listReaders()
		if err != nil {
			return err
		}
		var ok bool
		if states, ok = w.syncReaders(states, names, known); !ok {
			return nil
		}
		err = conn.getStatusChange(states, w.poll)
		if errors.Is(err, errUnknownReader) || errors.Is(err, errTimeout) {
			// A reader vanished between the list and the call, or nothing
			// happened: list again.
			continue
		}
		if err != nil {
			return err
		}
		if w.ctx.Err() != nil {
			return nil
		}
		var gone []string
		for i := range states {
			st := &states[i]
			if st.event&stateChanged == 0 {
				continue
			}
			st.current = st.event &^ stateChanged
			if i == 0 {
				continue // the list at the top of the loop sees the change
			}
			if st.event&stateUnknown != 0 {
				// The reader vanished. Report it now and forget it, so that
				// a reader coming back under the same name (a key pulled
				// and pushed back quickly) is reported afresh by the
				// relist.
				gone = append(gone, st.name)
				continue
			}
			info := known[st.name]
			present := st.event&statePresent != 0
			count := st.event >> stateCountSft
			if info.reported && info.present == present && info.count == count {
				continue
			}
			info.reported, info.present, info.count = true, present, count
			if !w.send(ReaderEvent{Reader: st.name, Present: present}) {
				return nil
			}
		}
		for _, name := range gone {
			delete(known, name)
			states = slices.DeleteFunc(states, func(st readerState) bool { return st.name == name })
			if !w.send(ReaderEvent{Reader: name, Removed: true}) {
				return nil
			}
		}
	}
}

// syncReaders makes states match the reader list: readers gone are reported
// as removed and dropped, new readers are added unaware. It returns false
// if ctx ended while sending.
func (w *pcscWatch) syncReaders(states []readerState, names []string, known map[string]*readerInfo) ([]readerState, bool) {
	kept := states[:1]
	for _, st := range states[1:] {
		if slices.Contains(names, st.name) {
			kept = append(kept, st)
			continue
		}
		delete(known, st.name)
		if !w.send(ReaderEvent{Reader: st.name, Removed: true}) {
			return kept, false
		}
	}
	for _, name := range names {
		if _, ok := known[name]; ok {
			continue
		}
		known[name] = &readerInfo{}
		kept = append(kept, readerState{name: name, current: stateUnaware})
	}
	return kept, true
}

// splitMultiString splits a PC/SC multi-string ("a\0b\0\0").
func splitMultiString(b []byte) []string {
	var out []string
	for _, s := range bytes.Split(b, []byte{0}) {
		if len(s) > 0 {
			out = append(out, string(s))
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// sleepCtx waits d or until ctx ends; false means ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// CardState tells whether reader holds a responsive card (present), whether a
// program holds it exclusively (held), and pcsc-lite's count of card insertions and
// removals in that reader (events), which tells a card that came back from one that
// never left. piv-go opens cards exclusively and leaks its handle when an open fails
// halfway (a card pulled during the open), which blocks the reader for the rest of
// the process; asking pcscd first keeps such attempts rare.
func CardState(reader string) (present, held bool, events uint16, err error) {
	if scardOpen == nil {
		return true, false, 0, nil // no way to ask: let the caller try
	}
	c, err := scardOpen()
	if err != nil {
		return false, false, 0, err
	}
	defer c.release()
	// An unaware current state makes pcsc-lite answer at once with the real one.
	st := []readerState{{name: reader}}
	if err := c.getStatusChange(st, time.Second); err != nil {
		return false, false, 0, err
	}
	e := st[0].event
	return e&statePresent != 0 && e&stateMute == 0, e&stateExclusiv != 0, uint16(e >> stateCountSft), nil
}
