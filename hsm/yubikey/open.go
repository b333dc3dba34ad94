package yubikey

import (
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/go-piv/piv-go/v2/piv"
)

// pcscMu is held while the package makes a pcscd connection (piv.Open, piv.Cards,
// CardState), so that the connection a failed open leaks is the only new one
// (see openCard).
var pcscMu sync.Mutex

// cards is piv.Cards under pcscMu.
func cards() ([]string, error) {
	pcscMu.Lock()
	defer pcscMu.Unlock()
	return piv.Cards()
}

// askState is CardState under pcscMu; the provider has one.
func (p *Provider) askState(reader string) (present, held bool, events uint16, err error) {
	pcscMu.Lock()
	defer pcscMu.Unlock()
	return p.opts.CardState(reader)
}

// releaseWait bounds how long a leaked handle is kept for pcscd to see its card
// go: pcscd polls a reader a few times a second.
const releaseWait = 3 * time.Second

// openCard is piv.Open without its leak. When an open fails after connecting to
// the card (the card pulled mid-open, which pcscd still shows for a moment after a
// pull, or a card without the PIV applet), piv-go returns the error but keeps the
// exclusive handle, and with it the reader, for the life of the process: the
// YubiKey plugged back, or any other program, could not use that reader until the
// appliance restarted. The handle lives in a pcscd connection of its own that
// nothing refers to any more; closing that connection makes pcscd release it.
func (p *Provider) openCard(reader string) (*piv.YubiKey, error) {
	pcscMu.Lock()
	defer pcscMu.Unlock()
	before := pcscdConns()
	yk, err := piv.Open(reader)
	if err == nil || !keepsHandle(err) {
		return yk, err
	}
	if conns := leaked(before, pcscdConns()); len(conns) > 0 {
		// A card that answered (no PIV applet) is there: nothing to wait for.
		var sw interface{ Status() uint16 }
		events, wait := p.events(reader)
		go p.release(reader, err, events, wait && !errors.As(err, &sw), conns)
	}
	return nil, err
}

// keepsHandle tells piv-go's failures after it connected (it wraps them in these
// words), which are the ones that keep the handle.
func keepsHandle(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "beginning smart card transaction") || strings.HasPrefix(msg, "selecting piv applet")
}

// leaked returns the pcscd connections made during a failed open, given the
// connections before and after it (socket inode by descriptor). The leaked one is
// among them, alone unless another part of the process connected at the same
// moment.
func leaked(before, after map[int]uint64) map[int]uint64 {
	old := map[uint64]bool{}
	for _, ino := range before {
		old[ino] = true
	}
	fresh := map[int]uint64{}
	for fd, ino := range after {
		if !old[ino] {
			fresh[fd] = ino
		}
	}
	return fresh
}

// release ends the leaked connections once pcscd has seen the card leave (its
// event count for the reader moved, or it shows no card), or after releaseWait. A
// connection ended while pcscd still shows the pulled card makes pcscd reset a
// card that is gone and mark the reader empty on its own; its reader poll then
// takes the next card plugged in for the old one and does not report it (seen
// with vpcd). The leaked connection, when it is the only candidate, is closed;
// candidates that cannot be told apart are shut down, which frees the reader and
// leaves their other user an error, as when pcscd restarts, but never a
// descriptor closed under it. A descriptor whose socket changed is left alone.
func (p *Provider) release(reader string, failure error, events uint16, wait bool, conns map[int]uint64) {
	for deadline := time.Now().Add(releaseWait); wait && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		present, _, ev, err := p.askState(reader)
		if err != nil || !present || ev != events {
			break
		}
	}
	for fd, ino := range conns {
		endConn(fd, ino, len(conns) == 1)
	}
	logger().Info("released the reader piv-go kept after a failed open", "reader", reader,
		"connections", len(conns), "open_error", failure)
}

// events is pcscd's count of card events in reader, when the provider can ask
// (pcscMu held).
func (p *Provider) events(reader string) (events uint16, known bool) {
	if p.opts.CardState == nil {
		return 0, false
	}
	_, _, events, err := p.opts.CardState(reader)
	return events, err == nil
}
