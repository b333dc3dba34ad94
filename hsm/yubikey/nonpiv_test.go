package yubikey

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/device/hotplug"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey/pcscdtest"
)

// plugOtherCard puts a smart card without a PIV applet (every command answered
// "file not found") into the first vpcd reader until the test ends.
func plugOtherCard(t *testing.T) {
	t.Helper()
	pcscdtest.StartPCSCD(t)
	pcscdtest.LockAllReaders(t)
	conn, err := net.DialTimeout("tcp", vpcd, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	go serveOtherCard(conn)
	t.Cleanup(func() {
		conn.Close()
		if err := pcscdtest.WaitCard(reader, false, 15*time.Second, nil); err != nil {
			t.Errorf("pulling the card: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, err := pcscdtest.State(reader); err == nil && st.Present && !st.Mute {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("pcscd does not show the card")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serveOtherCard speaks vpcd's framing: a 2-byte length, then a control byte
// (4 asks for the ATR) or a command APDU.
func serveOtherCard(conn net.Conn) {
	atr := []byte{0x3B, 0x80, 0x80, 0x01, 0x01}
	var hdr [2]byte
	for {
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(conn, msg); err != nil {
			return
		}
		var reply []byte
		switch {
		case len(msg) == 1 && msg[0] == 4:
			reply = atr
		case len(msg) <= 1:
			continue
		default:
			reply = []byte{0x6A, 0x82}
		}
		out := binary.BigEndian.AppendUint16(nil, uint16(len(reply)))
		if _, err := conn.Write(append(out, reply...)); err != nil {
			return
		}
	}
}

// A card without PIV is no YubiKey, and the scan that found so leaves its reader
// to other programs.
func TestOtherCardLeavesReaderFree(t *testing.T) {
	plugOtherCard(t)
	prov := NewProvider(ProviderOptions{CardState: hotplug.CardState})
	t.Cleanup(func() { prov.Close() })
	toks, err := prov.Tokens(context.Background())
	if err != nil || len(toks) != 0 {
		t.Fatalf("tokens %v, %v: want none", toks, err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		st, err := pcscdtest.State(reader)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Exclusive && st.Present {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the scan the reader is %+v, want the card there and the reader free", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
