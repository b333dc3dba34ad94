package hotplug

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/vyubikey/pcscdtest"
)

// These helpers give tests a real pcscd with vsmartcard's vpcd driver, and
// a minimal card that plugs into vpcd's first slot.

const (
	vpcdAddr   = "localhost:35963"
	vpcdReader = "Virtual PCD 00 00"
)

// needPCSCD checks that pcscd runs (make test starts it) and takes the vpcd
// reader this package's card uses for the rest of the test.
func needPCSCD(t *testing.T) {
	t.Helper()
	pcscdtest.StartPCSCD(t)
	pcscdtest.LockReader(t, vpcdAddr)
}

// vcard is a card in vpcd's reader: it answers the power and ATR control
// messages and rejects every APDU with 6D00 (instruction not supported),
// which is all pcscd needs to see a card present.
type vcard struct {
	conn   net.Conn
	talked chan struct{} // closed when vpcd first asks for the ATR
	done   chan struct{}
}

// testATR is a T=1 ATR with historical bytes "iot-hsm test" and its check
// byte computed below.
var testATR = func() []byte {
	atr := append([]byte{0x3B, 0x8C, 0x80, 0x01}, []byte("iot-hsm test")...)
	var tck byte
	for _, b := range atr[1:] {
		tck ^= b
	}
	return append(atr, tck)
}()

func plugCard(t *testing.T) *vcard {
	t.Helper()
	conn, err := net.DialTimeout("tcp", vpcdAddr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial vpcd at %s (is vsmartcard-vpcd installed and pcscd running?): %v", vpcdAddr, err)
	}
	c := &vcard{conn: conn, talked: make(chan struct{}), done: make(chan struct{})}
	go c.serve()
	return c
}

func (c *vcard) serve() {
	defer close(c.done)
	var once sync.Once
	hdr := make([]byte, 2)
	for {
		if _, err := io.ReadFull(c.conn, hdr); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(hdr))
		if _, err := io.ReadFull(c.conn, msg); err != nil {
			return
		}
		var reply []byte
		switch {
		case len(msg) == 1 && msg[0] == 4: // get ATR
			once.Do(func() { close(c.talked) })
			reply = testATR
		case len(msg) == 1: // 0 power off, 1 power on, 2 reset: no answer
			continue
		default:
			reply = []byte{0x6D, 0x00}
		}
		out := binary.BigEndian.AppendUint16(nil, uint16(len(reply)))
		if _, err := c.conn.Write(append(out, reply...)); err != nil {
			return
		}
	}
}

// unplug disconnects the card, which vpcd sees as a removal.
func (c *vcard) unplug() {
	c.conn.Close()
	<-c.done
}

// TestMain stops a pcscd that this test binary had to start (make test starts one
// for everybody, and then this leaves it alone).
func TestMain(m *testing.M) { pcscdtest.Main(m) }
