package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-piv/piv-go/v2/piv"

	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey/pcscdtest"
)

func TestMain(m *testing.M) { pcscdtest.Main(m) }

func TestParseVersion(t *testing.T) {
	if v, err := parseVersion("5.7.1"); err != nil || v != [3]byte{5, 7, 1} {
		t.Fatalf("5.7.1: %v %v", v, err)
	}
	for _, bad := range []string{"5.7", "5.7.1.2", "5.x.1", "5.7.300"} {
		if _, err := parseVersion(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// fakeVPCD speaks vpcd's side of the protocol on a loopback port.
type fakeVPCD struct {
	ln net.Listener
}

func (f *fakeVPCD) accept(t *testing.T) net.Conn {
	t.Helper()
	f.ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	c, err := f.ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	return c
}

func exchange(t *testing.T, c net.Conn, msg []byte) []byte {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	out := binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
	if _, err := c.Write(append(out, msg...)); err != nil {
		t.Fatal(err)
	}
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatal(err)
	}
	resp := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(c, resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestServeReconnects: when vpcd drops the connection (pcscd restarted), the
// card dials again after a backoff; cancelling unplugs it.
func TestServeReconnects(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f := &fakeVPCD{ln: ln}
	card, err := vyubikey.New(vyubikey.Config{StatePath: filepath.Join(t.TempDir(), "s.json"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		serve(ctx, card, ln.Addr().String(), slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()

	c1 := f.accept(t)
	if atr := exchange(t, c1, []byte{0x04}); !bytes.Equal(atr, vyubikey.ATR) {
		t.Fatalf("ATR %x", atr)
	}
	c1.Close() // vpcd goes away

	start := time.Now()
	c2 := f.accept(t)
	t.Logf("reconnected after %v", time.Since(start))
	resp := exchange(t, c2, []byte{0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08})
	if !bytes.HasSuffix(resp, []byte{0x90, 0x00}) {
		t.Fatalf("SELECT: %x", resp)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after unplug")
	}
}

// TestCommand runs the built command against pcscd: it becomes a card in the
// reader, and SIGTERM unplugs it and exits cleanly.
func TestCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "vyubikey")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	addr := os.Getenv("VYUBIKEY_TEST_VPCD")
	if addr == "" {
		addr = vyubikey.DefaultVPCDAddr
	}
	reader := pcscdtest.ReaderName(addr)
	pcscdtest.StartPCSCD(t)
	pcscdtest.LockReader(t, addr)

	state := filepath.Join(dir, "yk.json")
	rootPath := filepath.Join(dir, "root.pem")
	// Written by the command's output copier while the test may read it.
	var log syncbuf.Buffer
	cmd := exec.Command(bin, "--state", state, "--serial", "4242", "--vpcd", addr, "--root-out", rootPath)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
	})
	if err := pcscdtest.WaitCard(reader, true, 15*time.Second, nil); err != nil {
		t.Fatalf("card did not appear: %v\n%s", err, log.String())
	}
	yk, err := piv.Open(reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := yk.Serial()
	yk.Close()
	if err != nil || serial != 4242 {
		t.Fatalf("Serial() = %d, %v", serial, err)
	}
	b, err := os.ReadFile(rootPath)
	if err != nil {
		t.Fatal(err)
	}
	if blk, _ := pem.Decode(b); blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("root-out: %q", b)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, log.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no exit after SIGTERM\n%s", log.String())
	}
	if err := pcscdtest.WaitCard(reader, false, 15*time.Second, nil); err != nil {
		t.Fatalf("card still in the reader: %v", err)
	}
	if !strings.Contains(log.String(), "unplugged") {
		t.Fatalf("log:\n%s", log.String())
	}

	// The state file is the card: a different --serial is refused.
	out, err := exec.Command(bin, "--state", state, "--serial", "4243", "--vpcd", addr).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "holds serial 4242") {
		t.Fatalf("mismatched serial: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin).CombinedOutput(); err == nil {
		t.Fatalf("no --state accepted:\n%s", out)
	}
}
