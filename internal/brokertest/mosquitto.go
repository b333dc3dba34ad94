// Package brokertest runs a real mosquitto broker for tests.
package brokertest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
)

// MosquittoPath is where Debian installs the broker.
const MosquittoPath = "/usr/sbin/mosquitto"

const startTimeout = 10 * time.Second

// Mosquitto is a mosquitto process listening on 127.0.0.1:Port. It keeps nothing on
// disk (persistence false), so a restart loses sessions and retained messages, as a
// broker that crashed without persistence would.
type Mosquitto struct {
	URL  string // tcp://127.0.0.1:<Port>
	Port int

	conf string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
	log  *syncbuf.Buffer
}

// StartMosquitto starts mosquitto on a free loopback port and stops it when the test
// ends. extraConf lines are appended after the listener line, so per-listener options
// (cafile, certfile, keyfile, require_certificate...) apply to that listener; a test
// that turns it into TLS builds its ssl:// URL from Port. The broker's log is shown
// when the test fails. It fails the test, never skips it, when mosquitto is missing.
func StartMosquitto(t testing.TB, extraConf ...string) *Mosquitto {
	t.Helper()
	if _, err := os.Stat(MosquittoPath); err != nil {
		t.Fatalf("brokertest: mosquitto is required: %v (apt-get install mosquitto)", err)
	}
	m := &Mosquitto{Port: FreePort(t), log: new(syncbuf.Buffer)}
	m.URL = fmt.Sprintf("tcp://127.0.0.1:%d", m.Port)

	lines := []string{
		fmt.Sprintf("listener %d 127.0.0.1", m.Port),
		"allow_anonymous true",
		// Without it every round trip waits ~40 ms for Nagle and delayed ACKs.
		"set_tcp_nodelay true",
		"persistence false",
		"log_dest stderr",
	}
	if os.Geteuid() == 0 {
		// As root mosquitto would switch to its own user, which cannot read files
		// in the test's private temporary directory.
		lines = append(lines, "user root")
	}
	lines = append(lines, extraConf...)
	m.conf = filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(m.conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatalf("brokertest: %v", err)
	}

	t.Cleanup(func() {
		m.Stop()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", m.log.String())
		}
	})
	m.Start(t)
	return m
}

// Start starts the broker again on the same port, after Stop.
func (m *Mosquitto) Start(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	if m.cmd != nil {
		m.mu.Unlock()
		t.Fatalf("brokertest: mosquitto already running")
	}
	cmd := exec.Command(MosquittoPath, "-c", m.conf)
	cmd.Stdout = m.log
	cmd.Stderr = m.log
	if err := cmd.Start(); err != nil {
		m.mu.Unlock()
		t.Fatalf("brokertest: starting mosquitto: %v", err)
	}
	done := make(chan struct{})
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(done)
	}()

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(m.Port))
	deadline := time.Now().Add(startTimeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-done:
			t.Fatalf("brokertest: mosquitto exited at start-up:\n%s", m.log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.Stop()
			t.Fatalf("brokertest: mosquitto not accepting on %s after %s:\n%s", addr, startTimeout, m.log.String())
		}
	}
}

// Stop kills the broker with SIGKILL, as a crash would (no Will suppression, no
// goodbye to clients beyond the kernel closing the sockets), and waits for it to
// exit. Stopping a stopped broker does nothing.
func (m *Mosquitto) Stop() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd, m.done = nil, nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	// The only way Kill fails is a process that already exited, which done
	// then reports.
	_ = cmd.Process.Kill()
	<-done
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("brokertest: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
