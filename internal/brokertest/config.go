package brokertest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
)

// StartMosquittoConfig starts mosquitto with a whole configuration file's text, used
// as given (it must listen on 127.0.0.1:port, e.g. a shipped example with its paths
// adapted), and stops it when the test ends. URL is the tcp:// form of the address;
// a TLS listener's caller builds its ssl:// URL from Port. The log is shown when the
// test fails.
func StartMosquittoConfig(t testing.TB, port int, conf string) *Mosquitto {
	t.Helper()
	if _, err := os.Stat(MosquittoPath); err != nil {
		t.Fatalf("brokertest: mosquitto is required: %v (apt-get install mosquitto)", err)
	}
	m := &Mosquitto{Port: port, URL: fmt.Sprintf("tcp://127.0.0.1:%d", port), log: new(syncbuf.Buffer)}
	m.conf = filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(m.conf, []byte(conf), 0o600); err != nil {
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

// Log returns what the broker printed so far.
func (m *Mosquitto) Log() string { return m.log.String() }

// Reload sends the broker SIGHUP (it reads its configuration again, the ACL file
// included) and waits until its log says it did.
func (m *Mosquitto) Reload(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	cmd := m.cmd
	m.mu.Unlock()
	if cmd == nil {
		t.Fatal("brokertest: mosquitto is not running")
		return
	}
	const said = "Reloading config"
	before := strings.Count(m.log.String(), said)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("brokertest: SIGHUP: %v", err)
	}
	deadline := time.Now().Add(startTimeout)
	for strings.Count(m.log.String(), said) == before {
		if time.Now().After(deadline) {
			t.Fatalf("brokertest: mosquitto did not reload:\n%s", m.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
