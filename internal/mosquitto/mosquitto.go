// Package mosquitto runs a real mosquitto broker on loopback, for the benchmarks and,
// through brokertest, for tests. It does not import testing.
package mosquitto

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
)

// Path is where Debian installs the broker.
const Path = "/usr/sbin/mosquitto"

const startTimeout = 10 * time.Second

// ErrNotRunning is returned by Reload on a stopped broker.
var ErrNotRunning = errors.New("mosquitto is not running")

// Broker is a mosquitto process listening on 127.0.0.1:Port. It keeps nothing on
// disk (persistence false), so a restart loses sessions and retained messages, as a
// broker that crashed without persistence would.
type Broker struct {
	URL  string // tcp://127.0.0.1:<Port>
	Port int

	conf string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
	log  *syncbuf.Buffer
}

// Start starts mosquitto on a free loopback port, its configuration written to dir.
// extraConf lines are appended after the listener line, so per-listener options
// (cafile, certfile, keyfile, require_certificate...) apply to that listener; a
// caller that turns it into TLS builds its ssl:// URL from Port.
func Start(dir string, extraConf ...string) (*Broker, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	lines := []string{
		fmt.Sprintf("listener %d 127.0.0.1", port),
		"allow_anonymous true",
		// Without it every round trip waits ~40 ms for Nagle and delayed ACKs.
		"set_tcp_nodelay true",
		"persistence false",
		"log_dest stderr",
	}
	if os.Geteuid() == 0 {
		// As root mosquitto would switch to its own user, which cannot read files
		// in a private temporary directory.
		lines = append(lines, "user root")
	}
	return StartConfig(dir, port, strings.Join(append(lines, extraConf...), "\n")+"\n")
}

// StartConfig starts mosquitto with a whole configuration file's text, written to dir
// and used as given (it must listen on 127.0.0.1:port). URL is the tcp:// form of the
// address; a TLS listener's caller builds its ssl:// URL from Port.
func StartConfig(dir string, port int, conf string) (*Broker, error) {
	if _, err := os.Stat(Path); err != nil {
		return nil, fmt.Errorf("mosquitto is required: %w (apt-get install mosquitto)", err)
	}
	m := &Broker{Port: port, URL: fmt.Sprintf("tcp://127.0.0.1:%d", port), log: new(syncbuf.Buffer),
		conf: filepath.Join(dir, "mosquitto.conf")}
	if err := os.WriteFile(m.conf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	return m, m.Start()
}

// Start starts the broker again on the same port, after Stop.
func (m *Broker) Start() error {
	m.mu.Lock()
	if m.cmd != nil {
		m.mu.Unlock()
		return errors.New("mosquitto already running")
	}
	cmd := exec.Command(Path, "-c", m.conf)
	cmd.Stdout = m.log
	cmd.Stderr = m.log
	if err := cmd.Start(); err != nil {
		m.mu.Unlock()
		return fmt.Errorf("starting mosquitto: %w", err)
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
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("mosquitto exited at start-up:\n%s", m.log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.Stop()
			return fmt.Errorf("mosquitto not accepting on %s after %s:\n%s", addr, startTimeout, m.log.String())
		}
	}
}

// Stop kills the broker with SIGKILL, as a crash would (no Will suppression, no
// goodbye to clients beyond the kernel closing the sockets), and waits for it to
// exit. Stopping a stopped broker does nothing.
func (m *Broker) Stop() { m.end(syscall.SIGKILL) }

// Terminate stops the broker with SIGTERM, as `systemctl stop` would: with
// persistence on, it saves its state (sessions, retained messages) before it exits.
func (m *Broker) Terminate() { m.end(syscall.SIGTERM) }

// end sends sig and waits for the exit; a broker that outlives startTimeout after a
// SIGTERM is killed.
func (m *Broker) end(sig syscall.Signal) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd, m.done = nil, nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	// Signal fails only for a process that already exited, which done then reports.
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(startTimeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

// PID is the running broker's process id, 0 when it is stopped.
func (m *Broker) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Log returns what the broker printed so far.
func (m *Broker) Log() string { return m.log.String() }

// Reload sends the broker SIGHUP (it reads its configuration again, the ACL file
// included) and waits until its log says it did.
func (m *Broker) Reload() error {
	m.mu.Lock()
	cmd := m.cmd
	m.mu.Unlock()
	if cmd == nil {
		return ErrNotRunning
	}
	const said = "Reloading config"
	before := strings.Count(m.log.String(), said)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("SIGHUP: %w", err)
	}
	deadline := time.Now().Add(startTimeout)
	for strings.Count(m.log.String(), said) == before {
		if time.Now().After(deadline) {
			return fmt.Errorf("mosquitto did not reload:\n%s", m.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
