package vyubikey

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
)

// QEMU's VSCard protocol (ccid-card-passthru behind a usb-ccid device): each message
// is a header of three big-endian 32-bit words (type, reader id, length) and the
// data. The card says hello, adds its reader and inserts itself with its ATR; QEMU
// then sends the guest's command APDUs, each answered with the response APDU.
const (
	vscInit       = 1
	vscError      = 2
	vscReaderAdd  = 3
	vscATR        = 5
	vscCardRemove = 6
	vscAPDU       = 7
	vscFlush      = 8
	vscFlushDone  = 9

	vscVersion = 2 // 0.0.2, what QEMU speaks
)

// ServeVSCard is the card in QEMU's usb-ccid reader over conn (the chardev of a
// ccid-card-passthru device) until conn closes: the guest sees a YubiKey arrive on
// its USB bus when the device is added, and leave when it is removed.
func (c *Card) ServeVSCard(conn net.Conn) error {
	c.mu.Lock()
	c.resetSession()
	c.mu.Unlock()
	init := make([]byte, 12)
	copy(init, "VSCD")
	binary.BigEndian.PutUint32(init[4:], vscVersion)
	for _, m := range []struct {
		typ  uint32
		data []byte
	}{{vscInit, init}, {vscReaderAdd, []byte("vyubikey")}, {vscATR, ATR}} {
		if err := writeVSC(conn, m.typ, m.data); err != nil {
			return err
		}
	}
	r := bufio.NewReader(conn)
	for {
		typ, data, err := readVSC(r)
		if err != nil {
			return err
		}
		switch typ {
		case vscAPDU:
			err = writeVSC(conn, vscAPDU, c.HandleAPDU(data))
		case vscFlush:
			err = writeVSC(conn, vscFlushDone, nil)
		case vscInit, vscError, vscCardRemove:
			// QEMU's own hello and its acknowledgements need no answer.
		}
		if err != nil {
			return err
		}
	}
}

func writeVSC(w io.Writer, typ uint32, data []byte) error {
	msg := make([]byte, 12+len(data))
	binary.BigEndian.PutUint32(msg[0:], typ)
	binary.BigEndian.PutUint32(msg[8:], uint32(len(data)))
	copy(msg[12:], data)
	_, err := w.Write(msg)
	return err
}

func readVSC(r io.Reader) (uint32, []byte, error) {
	var hdr [12]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[8:])
	if n > 1<<16 {
		return 0, nil, fmt.Errorf("vyubikey: VSCard message of %d bytes", n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, nil, err
	}
	return binary.BigEndian.Uint32(hdr[:4]), data, nil
}
