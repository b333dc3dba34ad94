// Package brokertest runs a real mosquitto broker for tests: the testing wrapper of
// internal/mosquitto, which the benchmarks use directly.
package brokertest

import (
	"testing"

	"github.com/iot-hsm/iot-hsm/internal/mosquitto"
)

// MosquittoPath is where Debian installs the broker.
const MosquittoPath = mosquitto.Path

// Mosquitto is a broker started for a test (mosquitto.Broker: URL, Port, Stop, Log).
type Mosquitto struct {
	*mosquitto.Broker
}

// StartMosquitto starts mosquitto on a free loopback port and stops it when the test
// ends; extraConf lines apply to its listener (mosquitto.Start). The broker's log is
// shown when the test fails. It fails the test, never skips it, when mosquitto is
// missing.
func StartMosquitto(t testing.TB, extraConf ...string) *Mosquitto {
	t.Helper()
	b, err := mosquitto.Start(t.TempDir(), extraConf...)
	return cleanup(t, b, err)
}

// StartMosquittoConfig starts mosquitto with a whole configuration file's text, used
// as given (it must listen on 127.0.0.1:port, e.g. a shipped example with its paths
// adapted), and stops it when the test ends. URL is the tcp:// form of the address;
// a TLS listener's caller builds its ssl:// URL from Port. The log is shown when the
// test fails.
func StartMosquittoConfig(t testing.TB, port int, conf string) *Mosquitto {
	t.Helper()
	b, err := mosquitto.StartConfig(t.TempDir(), port, conf)
	return cleanup(t, b, err)
}

func cleanup(t testing.TB, b *mosquitto.Broker, err error) *Mosquitto {
	t.Helper()
	if err != nil {
		t.Fatalf("brokertest: %v", err)
	}
	t.Cleanup(func() {
		b.Stop()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", b.Log())
		}
	})
	return &Mosquitto{b}
}

// Start starts the broker again on the same port, after Stop.
func (m *Mosquitto) Start(t testing.TB) {
	t.Helper()
	if err := m.Broker.Start(); err != nil {
		t.Fatalf("brokertest: %v", err)
	}
}

// Reload sends the broker SIGHUP and waits until its log says it read its
// configuration again.
func (m *Mosquitto) Reload(t testing.TB) {
	t.Helper()
	if err := m.Broker.Reload(); err != nil {
		t.Fatalf("brokertest: %v", err)
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := mosquitto.FreePort()
	if err != nil {
		t.Fatalf("brokertest: %v", err)
	}
	return p
}
