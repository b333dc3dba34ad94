package vyubikey

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// qemuHost is the host side of the VSCard protocol as QEMU's ccid-card-passthru
// speaks it, over a pipe to ServeVSCard.
type qemuHost struct {
	t    *testing.T
	conn net.Conn
	done chan error
}

func startVSCard(t *testing.T, c *Card) *qemuHost {
	t.Helper()
	host, card := net.Pipe()
	h := &qemuHost{t: t, conn: host, done: make(chan error, 1)}
	go func() { h.done <- c.ServeVSCard(card) }()
	t.Cleanup(func() { host.Close(); card.Close() })
	return h
}

func (h *qemuHost) read() (uint32, []byte) {
	h.t.Helper()
	h.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, data, err := readVSC(h.conn)
	if err != nil {
		h.t.Fatalf("reading from the card: %v", err)
	}
	return typ, data
}

func (h *qemuHost) expect(want uint32) []byte {
	h.t.Helper()
	typ, data := h.read()
	if typ != want {
		h.t.Fatalf("message type %d, want %d (% x)", typ, want, data)
	}
	return data
}

func (h *qemuHost) send(typ uint32, data []byte) {
	h.t.Helper()
	h.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := writeVSC(h.conn, typ, data); err != nil {
		h.t.Fatalf("writing to the card: %v", err)
	}
}

func (h *qemuHost) ack(code uint32) {
	h.send(vscError, binary.BigEndian.AppendUint32(nil, code))
}

// served waits for ServeVSCard to return.
func (h *qemuHost) served() error {
	h.t.Helper()
	select {
	case err := <-h.done:
		return err
	case <-time.After(10 * time.Second):
		h.t.Fatal("ServeVSCard did not return")
		return nil
	}
}

// atrProtocols are the protocols an ATR offers (bit 0: T=0, bit 1: T=1), read as
// ISO 7816-3 does: T=0 alone when there is no TD1, otherwise each TDi's low nibble.
func atrProtocols(atr []byte) (protocols int, ok bool) {
	if len(atr) < 2 || (atr[0] != 0x3B && atr[0] != 0x3F) {
		return 0, false
	}
	i, y := 1, atr[1]>>4
	hist := int(atr[1] & 0x0F)
	protocols = 0
	for {
		td := -1
		for bit := 0; bit < 4; bit++ {
			if y&(1<<bit) != 0 {
				i++
				if bit == 3 {
					td = i
				}
			}
		}
		if td < 0 || td >= len(atr) {
			break
		}
		protocols |= 1 << (atr[td] & 0x0F)
		y = atr[td] >> 4
	}
	if protocols == 0 {
		protocols = 1
	}
	// TCK follows the historical bytes unless T=0 is the only protocol.
	want := i + 1 + hist
	if protocols != 1 {
		want++
	}
	return protocols, len(atr) == want
}

// t1Host is the guest's CCID driver speaking T=1 to the card through QEMU: each
// block goes to the card as one VSCard APDU message.
type t1Host struct {
	*qemuHost
	ns, nr byte // the host's N(S) and the N(S) it expects from the card
	ifsc   int  // the card's IFSC (254 in the YubiKey's ATR)
}

func (x *t1Host) exchange(pcb byte, inf []byte) (byte, []byte) {
	x.t.Helper()
	x.send(vscAPDU, frame(pcb, inf))
	b := x.expect(vscAPDU)
	if len(b) < 4 || len(b) != 4+int(b[2]) || lrc(b) != 0 || b[0] != 0 {
		x.t.Fatalf("not a T=1 block: % x", b)
	}
	return b[1], b[3 : len(b)-1]
}

// transmit sends apdu in I-blocks of at most ifsc bytes and collects the chained
// response, checking the card's sequence numbers as libccid does.
func (x *t1Host) transmit(apdu []byte) []byte {
	x.t.Helper()
	var pcb byte
	var inf []byte
	for len(apdu) > 0 {
		n := min(len(apdu), x.ifsc)
		more := n < len(apdu)
		p := x.ns << 6
		if more {
			p |= pcbMore
		}
		pcb, inf = x.exchange(p, apdu[:n])
		apdu, x.ns = apdu[n:], x.ns^1
		if more && pcb != pcbR|x.ns<<4 {
			x.t.Fatalf("chained command: card answered PCB %02x, want R(%d)", pcb, x.ns)
		}
	}
	var resp []byte
	for {
		if pcb&0x80 != 0 || pcb>>6&1 != x.nr {
			x.t.Fatalf("response: PCB %02x, want an I-block N(S)=%d", pcb, x.nr)
		}
		resp, x.nr = append(resp, inf...), x.nr^1
		if pcb&pcbMore == 0 {
			return resp
		}
		pcb, inf = x.exchange(pcbR|x.nr<<4, nil)
	}
}

// hello takes the card's introduction and acknowledges it as QEMU does.
func (h *qemuHost) hello() []byte {
	h.t.Helper()
	init := h.expect(vscInit)
	if len(init) < 12 || string(init[:4]) != "VSCD" || binary.BigEndian.Uint32(init[4:]) != 2 {
		h.t.Fatalf("Init % x: want the magic VSCD, version 2 and a capabilities word", init)
	}
	h.expect(vscReaderAdd)
	atr := h.expect(vscATR)
	h.send(vscInit, append([]byte("VSCD"), 0, 0, 0, 2, 0, 0, 0, 0))
	h.ack(vscSuccess) // the reader
	h.ack(vscSuccess) // the ATR
	return atr
}

// TestVSCardWithQEMUsReader: the card introduces itself as QEMU expects (Init with
// the magic first and version 0.0.2, a reader, an ATR QEMU accepts that offers the
// T=1 piv-go asks for), then answers the guest's T=1 blocks and QEMU's Flush, and
// ends when QEMU closes.
func TestVSCardWithQEMUsReader(t *testing.T) {
	c := newTestCard(t, Config{Serial: 87654321})
	h := startVSCard(t, c)
	atr := h.hello()
	if len(atr) > 40 {
		t.Fatalf("ATR of %d bytes: QEMU takes at most 40", len(atr))
	}
	if p, ok := atrProtocols(atr); !ok || p&2 == 0 {
		t.Fatalf("ATR % x: protocols %b, consistent %v; piv-go connects with T=1 only", atr, p, ok)
	}
	x := &t1Host{qemuHost: h, ifsc: 254}
	if r := x.transmit(hx("00 A4 04 00 05 A0 00 00 03 08")); !bytes.HasSuffix(r, []byte{0x90, 0x00}) {
		t.Fatalf("SELECT PIV: % x", r)
	}
	r := x.transmit(hx("00 F8 00 00"))
	if len(r) != 6 || binary.BigEndian.Uint32(r) != 87654321 || !bytes.HasSuffix(r, []byte{0x90, 0x00}) {
		t.Fatalf("GET SERIAL: % x, want 87654321 and 9000", r)
	}
	h.send(vscFlush, nil)
	h.expect(vscFlushDone)
	h.conn.Close()
	if err := h.served(); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("ServeVSCard after QEMU closed: %v", err)
	}
}

// TestVSCardT1Chaining: commands and responses longer than a block are chained both
// ways, the host's IFSD (S(IFS)) bounds the card's blocks, and after the guest
// resets the card (its counters start again; QEMU does not tell the card) the card
// follows the host's numbering instead of failing every exchange.
func TestVSCardT1Chaining(t *testing.T) {
	h := startVSCard(t, newTestCard(t, Config{}))
	h.hello()
	x := &t1Host{qemuHost: h, ifsc: 4}
	if pcb, inf := x.exchange(pcbS|sIFS, []byte{8}); pcb != pcbS|pcbSResp|sIFS || !bytes.Equal(inf, []byte{8}) {
		t.Fatalf("S(IFS request 8): PCB %02x % x, want S(IFS response 8)", pcb, inf)
	}
	sel := x.transmit(hx("00 A4 04 00 05 A0 00 00 03 08"))
	if len(sel) <= 8 || !bytes.HasSuffix(sel, []byte{0x90, 0x00}) {
		t.Fatalf("SELECT PIV over 8-byte blocks: % x", sel)
	}
	if r := x.transmit(append(hx("00 20 00 80 08"), padPIN("123456")...)); !bytes.Equal(r, []byte{0x90, 0x00}) {
		t.Fatalf("VERIFY in 4-byte blocks: % x", r)
	}
	x.transmit(hx("00 F8 00 00")) // the card's next N(S) is now 1

	x.ns, x.nr = 0, 0 // the guest powered the card off and on
	x.ifsc = 254
	x.send(vscAPDU, frame(0, hx("00 F8 00 00")))
	if b := x.expect(vscAPDU); b[1]>>6&1 == 0 {
		t.Fatalf("the card's counter did not need resetting (% x): the check proves nothing", b)
	}
	pcb, inf := x.exchange(pcbR|pcbRError, nil) // libccid: wrong N(S), R(0) with an error
	if pcb != 0 || len(inf) != 6 {
		t.Fatalf("after R(0, error): PCB %02x % x, want GET SERIAL's answer in I(0)", pcb, inf)
	}
	x.ns, x.nr = 1, 1
	if pcb, _ := x.exchange(pcbS|sResynch, nil); pcb != pcbS|pcbSResp|sResynch {
		t.Fatalf("S(RESYNCH request): PCB %02x", pcb)
	}
	x.ns, x.nr = 0, 0
	if r := x.transmit(hx("00 F8 00 00")); !bytes.HasSuffix(r, []byte{0x90, 0x00}) {
		t.Fatalf("GET SERIAL after RESYNCH: % x", r)
	}
	x.send(vscAPDU, []byte{0, 0, 5, 1}) // LEN says 5, nothing follows
	if b := x.expect(vscAPDU); len(b) != 4 || b[1]&0xC3 != pcbR|pcbREDC {
		t.Fatalf("a broken block: % x, want an R-block with the EDC error", b)
	}
}

// TestVSCardRejected: QEMU refusing the ATR (its check failed) ends the session
// with ErrVSCardRejected instead of a card that silently never appears.
func TestVSCardRejected(t *testing.T) {
	h := startVSCard(t, newTestCard(t, Config{}))
	h.expect(vscInit)
	h.expect(vscReaderAdd)
	h.expect(vscATR)
	h.ack(vscSuccess)
	h.ack(1) // VSC_GENERAL_ERROR: "ATR is inconsistent, ignoring"
	if err := h.served(); !errors.Is(err, ErrVSCardRejected) {
		t.Fatalf("ServeVSCard: %v, want ErrVSCardRejected", err)
	}
}

// TestVSCardBadInit: an Init without the magic is not QEMU.
func TestVSCardBadInit(t *testing.T) {
	h := startVSCard(t, newTestCard(t, Config{}))
	h.expect(vscInit)
	h.expect(vscReaderAdd)
	h.expect(vscATR)
	h.send(vscInit, []byte{0, 0, 0, 2, 'V', 'S', 'C', 'D', 0, 0, 0, 0})
	if err := h.served(); !errors.Is(err, ErrVSCardProtocol) {
		t.Fatalf("ServeVSCard: %v, want ErrVSCardProtocol", err)
	}
}

// TestATRProtocols checks the ATR reader the tests above rely on.
func TestATRProtocols(t *testing.T) {
	for _, c := range []struct {
		atr       []byte
		protocols int
	}{{ATR, 2}, {hx("3B 0D 80 73 C0 21 C0 57 59 75 62 69 4B 65 79"), 1}, {hx("3B 88 80 01 00 00 00 00 00 00 00 00 09"), 3}} {
		if p, ok := atrProtocols(c.atr); p != c.protocols || !ok {
			t.Errorf("% x: protocols %b (consistent %v), want %b", c.atr, p, ok, c.protocols)
		}
	}
}
