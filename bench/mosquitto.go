package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
)

const mosquittoPath = "/usr/sbin/mosquitto"

// mosquitto is a broker on a free loopback port, configured as internal/brokertest
// configures it (that package needs a testing.TB, which a plain program has not).
type mosquitto struct {
	url  string
	cmd  *exec.Cmd
	done chan struct{}
	log  *syncbuf.Buffer
}

func startMosquitto(dir string) (*mosquitto, error) {
	if _, err := os.Stat(mosquittoPath); err != nil {
		return nil, fmt.Errorf("mosquitto is required (make deps): %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	lines := []string{
		fmt.Sprintf("listener %d 127.0.0.1", port),
		"allow_anonymous true",
		// Without it every round trip waits ~40 ms for Nagle and delayed ACKs
		// (FACTS.md), which would measure the broker's configuration, not us.
		"set_tcp_nodelay true",
		"persistence false",
		"log_dest stderr",
	}
	if os.Geteuid() == 0 {
		// As root mosquitto would switch to its own user, which cannot read the
		// private work directory.
		lines = append(lines, "user root")
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	m := &mosquitto{url: fmt.Sprintf("tcp://127.0.0.1:%d", port), log: new(syncbuf.Buffer), done: make(chan struct{})}
	m.cmd = exec.Command(mosquittoPath, "-c", conf)
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting mosquitto: %w", err)
	}
	go func() {
		_ = m.cmd.Wait()
		close(m.done)
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return m, nil
		}
		select {
		case <-m.done:
			return nil, fmt.Errorf("mosquitto exited at start-up:\n%s", m.log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.stop()
			return nil, fmt.Errorf("mosquitto not accepting on %s:\n%s", addr, m.log.String())
		}
	}
}

func (m *mosquitto) pid() int { return m.cmd.Process.Pid }

// stop ends the broker this program started, by its pid.
func (m *mosquitto) stop() {
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(3 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
