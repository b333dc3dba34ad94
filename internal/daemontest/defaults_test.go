package daemontest

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
)

// TestRefusesToServeWithoutBroker: the daemon does not fall back to its
// unauthenticated embedded broker. Without [mqtt] broker and without --dev it exits
// at once saying what to configure, and it never listens beyond loopback, --dev or
// not; nothing answers on the address it was given.
func TestRefusesToServeWithoutBroker(t *testing.T) {
	bin := binary(t)
	for name, tc := range map[string]struct {
		mqtt string
		args []string
		want []string
	}{
		"no broker, no --dev": {mqtt: "embedded_listen = \"127.0.0.1:%d\"", want: []string{"no MQTT broker configured", "[mqtt] broker", "--dev"}},
		"wildcard listen":     {mqtt: "dev_broker = true\nembedded_listen = \"0.0.0.0:%d\"", want: []string{"embedded_listen", "loopback"}},
		"--dev-listen beyond loopback": {mqtt: "embedded_listen = \"127.0.0.1:%d\"", args: []string{"--dev", "--dev-listen", "0.0.0.0:%d"},
			want: []string{"embedded_listen", "loopback"}},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			port := brokertest.FreePort(t)
			d := &daemon{t: t, log: &syncbuf.Buffer{}, dir: dir, config: filepath.Join(dir, "config.toml"),
				deviceID: "ihsm-e2e-" + mqtttest.RandomID(), exited: make(chan struct{})}
			d.writeConfig(fmt.Sprintf(baseConfig, d.deviceID) + "\n[mqtt]\n" + fmt.Sprintf(tc.mqtt, port) + "\n")
			args := []string{"run", "--config", d.config, "--state-dir", filepath.Join(dir, "state")}
			for _, a := range tc.args {
				if strings.Contains(a, "%d") {
					a = fmt.Sprintf(a, port)
				}
				args = append(args, a)
			}
			d.command(bin, args...)
			d.launch()
			// An old daemon would be serving by now; the check must not wait for
			// the exit to see it.
			time.Sleep(500 * time.Millisecond)
			if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
				c.Close()
				t.Errorf("something listens on port %d: the embedded broker started", port)
			}
			if code := d.wait(30 * time.Second); code == 0 {
				t.Errorf("exit code 0, want a failure")
			}
			for _, w := range tc.want {
				if !strings.Contains(d.log.String(), w) {
					t.Errorf("the log does not say %q:\n%s", w, d.log.String())
				}
			}
		})
	}
}
