package vyubikey

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// vpcd's framing: each message is a 2-byte big-endian length and the message.
// A 1-byte message is a control code; anything longer is a command APDU, which
// is answered with the response APDU. Only "get ATR" is answered among the
// control codes.
const (
	vpcdPowerOff = 0x00
	vpcdPowerOn  = 0x01
	vpcdReset    = 0x02
	vpcdGetATR   = 0x04
)

// ErrConnected is returned by Connect while the card is already connected.
var ErrConnected = errors.New("vyubikey: card already connected")

// Connect dials vpcd at addr (default DefaultVPCDAddr), which inserts the card
// into the virtual reader, and serves it until ctx ends, Unplug is called or
// the connection drops. It returns nil after ctx ends or Unplug (a deliberate
// removal) and an error if dialling failed or vpcd went away. Connect again to
// replug.
func (c *Card) Connect(ctx context.Context, addr string) error {
	if addr == "" {
		addr = DefaultVPCDAddr
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("vyubikey: dialling vpcd: %w", err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c.connMu.Lock()
	if c.conn != nil {
		c.connMu.Unlock()
		conn.Close()
		return ErrConnected
	}
	c.conn = conn
	c.unplugged = false
	c.connMu.Unlock()

	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	c.mu.Lock()
	c.resetSession()
	c.mu.Unlock()
	c.log.Info("vyubikey: plugged in", "vpcd", addr)

	err = c.serve(conn)

	conn.Close()
	c.connMu.Lock()
	deliberate := c.unplugged || ctx.Err() != nil
	c.conn = nil
	c.connMu.Unlock()
	c.mu.Lock()
	c.resetSession()
	c.mu.Unlock()
	if deliberate {
		c.log.Info("vyubikey: unplugged")
		return nil
	}
	c.log.Warn("vyubikey: vpcd connection lost", "err", err)
	return fmt.Errorf("vyubikey: vpcd connection: %w", err)
}

// Unplug drops the vpcd connection now, as pulling the key out would; the
// running Connect returns nil.
func (c *Card) Unplug() {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if c.conn != nil {
		c.unplugged = true
		c.conn.Close()
	}
}

func (c *Card) serve(conn net.Conn) error {
	r := bufio.NewReader(conn)
	quickAck := quickAcker(conn)
	var hdr [2]byte
	for {
		quickAck()
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		msg := make([]byte, n)
		quickAck()
		if _, err := io.ReadFull(r, msg); err != nil {
			return err
		}
		var reply []byte
		switch {
		case n == 0:
			continue
		case n == 1:
			switch msg[0] {
			case vpcdPowerOff, vpcdPowerOn, vpcdReset:
				c.mu.Lock()
				c.resetSession()
				c.mu.Unlock()
				continue
			case vpcdGetATR:
				reply = ATR
			default:
				continue
			}
		default:
			reply = c.HandleAPDU(msg)
		}
		out := make([]byte, 2+len(reply))
		binary.BigEndian.PutUint16(out, uint16(len(reply)))
		copy(out[2:], reply)
		if _, err := conn.Write(out); err != nil {
			return err
		}
	}
}
