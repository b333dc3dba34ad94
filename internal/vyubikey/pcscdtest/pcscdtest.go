// Package pcscdtest runs the real PC/SC stack for tests: it starts pcscd (with
// vsmartcard's vpcd driver, whose virtual readers are "Virtual PCD 00 00" on
// vpcd port 35963 and "Virtual PCD 00 01" on 35964) if none is running, and
// plugs virtual YubiKeys (package vyubikey) into those readers.
//
// A pcscd this package starts is stopped by Main (call it from TestMain) and,
// should the test binary die first, by the kernel (parent-death signal). A
// pcscd that was already running is left alone.
//
// Test binaries of different packages run in parallel; a reader is one card
// slot, so PlugCard takes an exclusive lock file per vpcd port
// (/tmp/vyubikey-vpcd-<port>.lock) for as long as the card is plugged.
package pcscdtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-piv/piv-go/v2/piv"

	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
)

// Socket is pcscd's client socket (Debian's build).
const Socket = "/run/pcscd/pcscd.comm"

var (
	mu      sync.Mutex
	started *exec.Cmd
	exited  chan struct{}
)

// Running says whether a pcscd answers on its socket.
func Running() bool {
	conn, err := net.DialTimeout("unix", Socket, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// StartPCSCD makes sure pcscd is running and lists the virtual readers. It
// starts `pcscd --foreground` once per test binary if none is running.
func StartPCSCD(t testing.TB) {
	t.Helper()
	if err := ensure(); err != nil {
		t.Fatalf("pcscd: %v", err)
	}
}

func ensure() error {
	mu.Lock()
	defer mu.Unlock()
	if started != nil || Running() {
		return waitReaders()
	}
	if _, err := exec.LookPath("pcscd"); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(Socket), 0o755); err != nil {
		return err
	}
	logf, err := os.CreateTemp("", "pcscd-*.log")
	if err != nil {
		return err
	}
	// Start it from a goroutine that keeps its OS thread for the life of the
	// process: the parent-death signal is tied to the thread that forked.
	errc := make(chan error, 1)
	exited = make(chan struct{})
	go func() {
		runtime.LockOSThread()
		cmd := exec.Command("pcscd", "--foreground")
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
		if err := cmd.Start(); err != nil {
			errc <- err
			return
		}
		started = cmd
		errc <- nil
		cmd.Wait()
		logf.Close()
		close(exited)
		select {} // keep the thread
	}()
	if err := <-errc; err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for !Running() {
		if time.Now().After(deadline) {
			return fmt.Errorf("pcscd did not come up (log %s)", logf.Name())
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("pcscd exited: %s", strings.TrimSpace(string(b)))
		case <-time.After(50 * time.Millisecond):
		}
	}
	return waitReaders()
}

// waitReaders waits until pcscd lists the first virtual reader.
func waitReaders() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		readers, err := piv.Cards()
		if err == nil {
			for _, r := range readers {
				if strings.HasPrefix(r, "Virtual PCD") {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no virtual reader in %q (err %v): is vsmartcard-vpcd installed?", readers, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// StopPCSCD stops the pcscd this process started, if any.
func StopPCSCD() {
	mu.Lock()
	defer mu.Unlock()
	if started == nil {
		return
	}
	started.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		started.Process.Kill()
		<-exited
	}
	started = nil
}

// Main runs the tests and then stops a pcscd the tests started:
//
//	func TestMain(m *testing.M) { pcscdtest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	StopPCSCD()
	os.Exit(code)
}

// ReaderName is the PC/SC name of the virtual reader whose vpcd listens at addr.
func ReaderName(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	switch port {
	case "35964":
		return "Virtual PCD 00 01"
	}
	return "Virtual PCD 00 00"
}

// readerLocks are the lock files this process holds, with reference counts:
// flock(2) locks belong to an open file, so the process takes each only once.
var (
	lockMu      sync.Mutex
	readerLocks = map[string]*heldLock{}
)

type heldLock struct {
	f    *os.File
	refs int
}

// LockAllReaders takes the locks of both virtual readers until the test ends, in
// port order. A test whose PIV backend looks at every reader (an appliance, a
// daemon) takes it before it plugs or starts anything: otherwise its backend opens
// another package's card, exclusively, and may hold it while that package's test
// pulls or plugs it.
func LockAllReaders(t testing.TB) {
	t.Helper()
	LockReader(t, vyubikey.DefaultVPCDAddr)
	LockReader(t, "localhost:35964")
}

// LockReader takes the lock file of a vpcd port until the test ends, waiting
// up to 5 minutes for another process to release it.
func LockReader(t testing.TB, addr string) {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("vpcd address %q: %v", addr, err)
	}
	lockMu.Lock()
	defer lockMu.Unlock()
	if l := readerLocks[port]; l != nil {
		l.refs++
		t.Cleanup(func() { unlockReader(port) })
		return
	}
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "vyubikey-vpcd-"+port+".lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("reader lock: %v", err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			t.Fatalf("reader lock %s: %v", f.Name(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	readerLocks[port] = &heldLock{f: f, refs: 1}
	t.Cleanup(func() { unlockReader(port) })
}

func unlockReader(port string) {
	lockMu.Lock()
	defer lockMu.Unlock()
	l := readerLocks[port]
	if l == nil {
		return
	}
	if l.refs--; l.refs == 0 {
		l.f.Close() // releases the lock
		delete(readerLocks, port)
	}
}

// Plugged is a card in a reader.
type Plugged struct {
	Card   *vyubikey.Card
	Addr   string // vpcd address
	Reader string // PC/SC reader name

	cancel context.CancelFunc
	done   chan error
}

// PlugCard starts pcscd if needed, locks the reader of vpcd address addr
// (default vyubikey.DefaultVPCDAddr), connects the card and waits until
// piv.Open works on the reader. The card is unplugged at the end of the test.
func PlugCard(t testing.TB, card *vyubikey.Card, addr string) *Plugged {
	t.Helper()
	if addr == "" {
		addr = vyubikey.DefaultVPCDAddr
	}
	StartPCSCD(t)
	LockReader(t, addr)
	p := &Plugged{Card: card, Addr: addr, Reader: ReaderName(addr)}
	p.Replug(t)
	t.Cleanup(func() { p.Unplug(t) })
	return p
}

// Replug connects the card again after Unplug and waits until it is usable. A
// connection that pcscd has not noticed after a while is dropped and made again
// once: on a loaded machine vpcd sometimes misses the first one.
//
// It first waits until pcscd shows the reader empty: pcscd polls the reader, so a
// card pulled just before (a test that unplugged without waiting) still shows
// for a moment, and opening that card in WaitCard would leak piv-go's handle.
func (p *Plugged) Replug(t testing.TB) {
	t.Helper()
	if p.done != nil {
		t.Fatalf("card already plugged")
	}
	err := WaitCard(p.Reader, false, 15*time.Second, nil)
	if err != nil {
		t.Fatalf("reader %s never empty before plugging: %v", p.Reader, err)
	}
	for attempt := 0; attempt < 2; attempt++ {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Card.Connect(ctx, p.Addr) }()
		if err = WaitCard(p.Reader, true, 10*time.Second, done); err == nil {
			p.cancel, p.done = cancel, done
			return
		}
		p.Card.Unplug()
		cancel()
		<-done
	}
	t.Fatalf("plugging card into %s: %v", p.Reader, err)
}

// Unplug disconnects the card and waits until pcscd sees the reader empty.
func (p *Plugged) Unplug(t testing.TB) {
	t.Helper()
	if p.done == nil {
		return
	}
	p.Card.Unplug()
	p.cancel()
	err := <-p.done
	p.done = nil
	if err != nil {
		t.Errorf("card connection: %v", err)
	}
	if err := WaitCard(p.Reader, false, 15*time.Second, nil); err != nil {
		t.Errorf("unplugging: %v", err)
	}
}

// WaitCard waits until a card is (present) or is not (!present) in the
// reader. Presence is read from pcscd's reader state; a present card must also
// open with piv.Open. (piv.Open is never tried on a card that may be going
// away: piv-go leaks its exclusive PC/SC handle when SELECT fails after
// connecting, which blocks the reader for the rest of the process.) done, if
// not nil, reports an early end of the card's connection.
func WaitCard(reader string, present bool, timeout time.Duration, done <-chan error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		st, err := State(reader)
		switch {
		case err != nil:
			last = err
		case !present && !st.Present:
			return nil
		case present && st.Present && !st.Mute && !st.Exclusive:
			yk, err := piv.Open(reader)
			if err == nil {
				yk.Close()
				return nil
			}
			last = err
		default:
			last = fmt.Errorf("reader state %+v", st)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out (last: %v)", last)
		}
		if done != nil {
			select {
			case err := <-done:
				if err == nil {
					err = errors.New("connection ended")
				}
				return err
			default:
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ProtectManagementKey gives the card in reader a random management key kept in its
// PIN-protected metadata, as `ykman piv access change-management-key --generate
// --protect` does: the appliance then needs only the PIN.
func ProtectManagementKey(t testing.TB, reader string) {
	t.Helper()
	yk, err := piv.Open(reader)
	if err != nil {
		t.Fatal(err)
	}
	defer yk.Close()
	mk := make([]byte, 24)
	if _, err := rand.Read(mk); err != nil {
		t.Fatal(err)
	}
	if err := yk.SetManagementKey(piv.DefaultManagementKey, mk); err != nil {
		t.Fatal(err)
	}
	if err := yk.SetMetadata(mk, &piv.Metadata{ManagementKey: &mk}); err != nil {
		t.Fatal(err)
	}
}
