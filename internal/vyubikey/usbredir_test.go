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

// qemuRedir is QEMU's usb-redir device (the usbredir guest side) talking to
// ServeUSBRedir over a pipe.
type qemuRedir struct {
	t     *testing.T
	conn  net.Conn
	codec *usbRedir // the same framing, with QEMU's view of the capabilities
	done  chan error
	id    uint64
}

func startUSBRedir(t *testing.T, c *Card) *qemuRedir {
	t.Helper()
	host, card := net.Pipe()
	q := &qemuRedir{t: t, conn: host, codec: &usbRedir{w: host}, done: make(chan error, 1)}
	go func() { q.done <- c.ServeUSBRedir(card) }()
	t.Cleanup(func() { host.Close(); card.Close() })
	return q
}

func (q *qemuRedir) read(want uint32) (uint64, []byte) {
	q.t.Helper()
	q.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, id, body, err := q.codec.read(q.conn)
	if err != nil {
		q.t.Fatalf("reading from the device: %v", err)
	}
	if typ != want {
		q.t.Fatalf("usbredir message %d, want %d (% x)", typ, want, body)
	}
	return id, body
}

func (q *qemuRedir) send(typ uint32, th, data []byte) uint64 {
	q.t.Helper()
	q.id += 1 << 33 // beyond 32 bits: the ids must stay 64-bit
	q.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := q.codec.send(typ, q.id, th, data); err != nil {
		q.t.Fatalf("writing to the device: %v", err)
	}
	return q.id
}

// getDescriptor is a GET_DESCRIPTOR on endpoint 0.
func (q *qemuRedir) getDescriptor(typ, index byte, length uint16) []byte {
	q.t.Helper()
	th := []byte{0x80, 6, 0x80, 0, index, typ, 0, 0, 0, 0}
	binary.LittleEndian.PutUint16(th[8:], length)
	id := q.send(urControlPacket, th, nil)
	got, body := q.read(urControlPacket)
	if got != id || body[3] != urSuccess {
		q.t.Fatalf("GET_DESCRIPTOR %d/%d: id %d status %d", typ, index, got, body[3])
	}
	return body[10:]
}

// ccid sends one CCID message on the bulk OUT endpoint, in 64-byte packets as a
// full-speed bus carries it, and fetches the reply on the bulk IN endpoint.
func (q *qemuRedir) ccid(typ byte, seq byte, data []byte) []byte {
	q.t.Helper()
	msg := append([]byte{typ, 0, 0, 0, 0, 0, seq, 0, 0, 0}, data...)
	binary.LittleEndian.PutUint32(msg[1:], uint32(len(data)))
	in := q.send(urBulkPacket, []byte{usbBulkIn, 0, 0, 0, 0, 0, 0, 0, 1, 0}, nil) // 64 KiB asked for
	for len(msg) > 0 {
		n := min(len(msg), 64)
		q.send(urBulkPacket, []byte{usbBulkOut, 0, byte(n), 0, 0, 0, 0, 0, 0, 0}, msg[:n])
		if _, body := q.read(urBulkPacket); body[1] != urSuccess || int(body[2]) != n {
			q.t.Fatalf("bulk OUT: % x", body[:10])
		}
		msg = msg[n:]
	}
	id, body := q.read(urBulkPacket)
	r := body[10:]
	if id != in || body[0] != usbBulkIn || len(r) < 10 || r[6] != seq || int(binary.LittleEndian.Uint32(r[1:])) != len(r)-10 {
		q.t.Fatalf("bulk IN for request %d: id %d, % x", in, id, body)
	}
	return r
}

// TestUSBRedirYubiKey: QEMU sees a Yubico CCID device (interface, endpoints, the
// descriptors the guest's kernel and libccid read: T=1, APDU level), and the guest
// powers the card and exchanges APDUs with it through CCID messages split into USB
// packets.
func TestUSBRedirYubiKey(t *testing.T) {
	q := startUSBRedir(t, newTestCard(t, Config{Serial: 7654321}))
	_, hello := q.read(urHello)
	// What QEMU needs for a device on its XHCI (its "lacks capabilities" refusal).
	need := uint32(urCapMaxPacketSize | urCap64BitIDs | urCap32BitBulk)
	if len(hello) != 68 || binary.LittleEndian.Uint32(hello[64:])&need != need {
		t.Fatalf("hello % x: want max packet size, 64-bit ids and 32-bit bulk lengths", hello)
	}
	caps := make([]byte, 68)
	copy(caps, "qemu usb-redir guest")
	binary.LittleEndian.PutUint32(caps[64:], 0xFF)
	q.send(urHello, caps, nil)
	q.codec.peer = urCaps
	if _, b := q.read(urInterfaceInfo); binary.LittleEndian.Uint32(b) != 1 || b[4+32] != 0x0B {
		t.Fatalf("interface_info % x: want one smart card interface", b)
	}
	if _, b := q.read(urEPInfo); len(b) != 160 || b[usbBulkOut] != 2 || b[18] != 2 || b[3*32+2*18] != 64 {
		t.Fatalf("ep_info % x: want bulk endpoints 01 and 82 of 64 bytes", b)
	}
	if _, b := q.read(urDeviceConnect); len(b) != 10 || binary.LittleEndian.Uint16(b[4:]) != 0x1050 {
		t.Fatalf("device_connect % x: want Yubico's vendor id", b)
	}
	if d := q.getDescriptor(1, 0, 18); len(d) != 18 || !bytes.Equal(d[8:12], []byte{0x50, 0x10, 0x04, 0x04}) {
		t.Fatalf("device descriptor % x", d)
	}
	if d := q.getDescriptor(2, 0, 9); len(d) != 9 || d[2] != 86 {
		t.Fatalf("configuration descriptor's head % x", d)
	}
	cfg := q.getDescriptor(2, 0, 255)
	cls := cfg[18 : 18+0x36]
	if cls[1] != 0x21 || binary.LittleEndian.Uint32(cls[6:])&2 == 0 || binary.LittleEndian.Uint32(cls[40:])&0x60000 == 0 {
		t.Fatalf("CCID descriptor % x: want T=1 and APDU level", cls)
	}
	if d := q.getDescriptor(3, 2, 255); !bytes.Equal(d[2:], []byte("Y\x00u\x00b\x00i\x00K\x00e\x00y\x00 \x00C\x00C\x00I\x00D\x00")) {
		t.Fatalf("product string % x", d)
	}

	if r := q.ccid(ccidPowerOn, 1, nil); r[0] != ccidDataBlock || !bytes.Equal(r[10:], ATR) {
		t.Fatalf("power on: % x, want the ATR", r)
	}
	q.ccid(ccidXfrBlock, 2, hx("00 A4 04 00 05 A0 00 00 03 08"))
	long := append(hx("00 20 00 80 08"), padPIN("123456")...)
	long = append(long, make([]byte, 80)...) // a VERIFY with junk after it: 3 USB packets
	if r := q.ccid(ccidXfrBlock, 3, long); r[0] != ccidDataBlock || len(r) != 12 {
		t.Fatalf("a long command: % x", r)
	}
	r := q.ccid(ccidXfrBlock, 4, hx("00 F8 00 00"))
	if r[7] != ccidActive || binary.BigEndian.Uint32(r[10:]) != 7654321 || !bytes.HasSuffix(r, []byte{0x90, 0x00}) {
		t.Fatalf("GET SERIAL: % x", r)
	}
	if r := q.ccid(ccidPowerOff, 5, nil); r[0] != ccidSlotStatus || r[7] != ccidInactive {
		t.Fatalf("power off: % x", r)
	}
	if r := q.ccid(ccidXfrBlock, 6, hx("00 F8 00 00")); r[7]&ccidFailed == 0 {
		t.Fatalf("an APDU to an unpowered card: % x, want a failure", r)
	}

	// The guest gives up on a read: cancel_data_packet carries the request's id.
	in := q.send(urBulkPacket, []byte{usbBulkIn, 0, 0, 0x10, 0, 0, 0, 0, 0, 0}, nil)
	q.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := q.codec.send(urCancelData, in, nil, nil); err != nil {
		t.Fatal(err)
	}
	if id, b := q.read(urBulkPacket); id != in || b[1] != urCancelled {
		t.Fatalf("cancelled IN: id %d % x", id, b)
	}
	q.conn.Close()
	if err := <-q.done; !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("ServeUSBRedir after QEMU closed: %v", err)
	}
}

// TestUSBRedirShortMessage: a message shorter than its type header ends the session
// with ErrUSBRedirProtocol instead of reading past it.
func TestUSBRedirShortMessage(t *testing.T) {
	q := startUSBRedir(t, newTestCard(t, Config{}))
	q.read(urHello)
	q.send(urControlPacket, []byte{0x80, 6, 0x80}, nil)
	if err := <-q.done; !errors.Is(err, ErrUSBRedirProtocol) {
		t.Fatalf("ServeUSBRedir: %v, want ErrUSBRedirProtocol", err)
	}
}
