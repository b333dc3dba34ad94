package vyubikey

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// QEMU's VSCard protocol (ccid-card-passthru behind a usb-ccid device): each message
// is a header of three big-endian 32-bit words (type, reader id, length) and the
// data. The card says hello, adds its reader and inserts itself with its ATR; QEMU
// then sends what the guest sends the card, each answered with the card's reply.
// QEMU calls these APDUs, but its reader works at TPDU level: with the YubiKey's
// ATR (T=1 only, which piv-go insists on) they are T=1 blocks (t1.go).
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
	vscSuccess = 0 // the code of an Error message that acknowledges
)

// vscMagic opens the Init message in this byte order on every host: QEMU compares
// it as the native word it reads from the string "VSCD".
var vscMagic = []byte("VSCD")

// Errors of ServeVSCard, besides those of the connection.
var (
	// ErrVSCardRejected: QEMU answered the reader or the ATR with an error code.
	ErrVSCardRejected = errors.New("vyubikey: QEMU rejected the card")
	// ErrVSCardProtocol: QEMU sent something the protocol does not allow.
	ErrVSCardProtocol = errors.New("vyubikey: VSCard protocol error")
	// ErrUSBRedirProtocol: QEMU sent a usbredir message ServeUSBRedir cannot read.
	ErrUSBRedirProtocol = errors.New("vyubikey: usbredir protocol error")
)

// ServeVSCard is the card in QEMU's usb-ccid reader over conn (the chardev of a
// ccid-card-passthru device) until conn closes: the guest sees a YubiKey arrive on
// its USB bus when the device is added, and leave when it is removed. It returns
// the connection's error (io.EOF once QEMU closes the chardev), ErrVSCardRejected
// or ErrVSCardProtocol.
func (c *Card) ServeVSCard(conn net.Conn) error {
	c.mu.Lock()
	c.resetSession()
	c.mu.Unlock()
	init := make([]byte, 12)
	copy(init, vscMagic)
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
	blocks := newT1()
	for {
		typ, data, err := readVSC(r)
		if err != nil {
			return err
		}
		if err := c.vscMessage(conn, blocks, typ, data); err != nil {
			return err
		}
	}
}

// vscMessage handles one message from QEMU.
func (c *Card) vscMessage(w io.Writer, blocks *t1, typ uint32, data []byte) error {
	switch typ {
	case vscAPDU:
		return writeVSC(w, vscAPDU, blocks.block(data, c.HandleAPDU))
	case vscFlush:
		return writeVSC(w, vscFlushDone, nil)
	case vscInit:
		if len(data) < 8 || string(data[:4]) != string(vscMagic) {
			return fmt.Errorf("%w: Init without the VSCD magic (% x)", ErrVSCardProtocol, data)
		}
	case vscError:
		// QEMU acknowledges the reader and the ATR with an Error message; any code
		// but success means the guest will never see the card.
		if len(data) < 4 {
			return fmt.Errorf("%w: Error message of %d bytes", ErrVSCardProtocol, len(data))
		}
		if code := binary.BigEndian.Uint32(data); code != vscSuccess {
			return fmt.Errorf("%w: error code %d", ErrVSCardRejected, code)
		}
	}
	return nil
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
		return 0, nil, fmt.Errorf("%w: message of %d bytes", ErrVSCardProtocol, n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, nil, err
	}
	return binary.BigEndian.Uint32(hdr[:4]), data, nil
}
