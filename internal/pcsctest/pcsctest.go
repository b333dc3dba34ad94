// Package pcsctest gives tests the PC/SC stack of the appliance: a running pcscd
// with vsmartcard's vpcd readers. pcscd is shared by every test binary, so it is
// started by `make test` (and CI), not by tests; the two vpcd readers are shared
// too, so a test holds a lock on the one it plugs cards into.
package pcsctest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// The vpcd readers: a card connects to the port, pcscd shows it in the reader.
const (
	Port0   = 35963
	Reader0 = "Virtual PCD 00 00"
	Port1   = 35964
	Reader1 = "Virtual PCD 00 01"
)

const socket = "/run/pcscd/pcscd.comm"

// Running reports whether pcscd answers on its socket.
func Running() bool {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Need fails the test, never skips it, when pcscd is not running.
func Need(t testing.TB) {
	t.Helper()
	if !Running() {
		t.Fatal("pcscd is not running: `make test` starts it (or run `pcscd` as root); it needs the pcscd and vsmartcard-vpcd packages")
	}
}

// LockReader makes the test the only user of a vpcd reader until it ends, across
// test binaries running in parallel.
func LockReader(t testing.TB, port int) {
	t.Helper()
	path := filepath.Join(os.TempDir(), fmt.Sprintf("iot-hsm-vpcd-%d.lock", port))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}
