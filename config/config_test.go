package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	pinFile := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(pinFile, []byte("4321\n"), 0o600)
	c, err := Parse([]byte(`
device_id = "ihsm-lab"
[[pkcs11]]
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "pkcs11:token=ca"
pin_file = "` + pinFile + `"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.DeviceID != "ihsm-lab" || c.StateDir != DefaultStateDir || len(c.PKCS11) != 1 {
		t.Fatalf("parsed %+v", c)
	}
	if pin, err := c.PKCS11[0].ReadPIN(); err != nil || pin != "4321" {
		t.Fatalf("pin %q %v", pin, err)
	}
}

func TestRejects(t *testing.T) {
	for name, text := range map[string]string{
		"misspelt key":  "devce_id = \"x\"",
		"not toml":      "device_id = ",
		"no module":     "[[pkcs11]]\npin = \"1\"",
		"two pins":      "[[pkcs11]]\nmodule = \"m\"\npin = \"1\"\npin_file = \"f\"",
		"bad log level": "log_level = \"loud\"",
		"wrong type":    "device_id = 3",
	} {
		if _, err := Parse([]byte(text)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

// A configuration without a broker is refused outside development mode, with a
// message that says what to set; --dev or dev_broker lets the embedded broker run.
func TestNoBrokerOnlyInDevelopment(t *testing.T) {
	c, err := Parse([]byte("device_id = \"x\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.CheckBroker(false)
	if !errors.Is(err, ErrNoBroker) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("no broker, no --dev: %v, want ErrNoBroker", err)
	}
	for _, want := range []string{"[mqtt] broker", "cert_file", "--dev"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if err := c.CheckBroker(true); err != nil {
		t.Errorf("--dev: %v", err)
	}
	if c.MQTT.EmbeddedListen != DefaultEmbeddedListen {
		t.Errorf("embedded_listen %q, want %q", c.MQTT.EmbeddedListen, DefaultEmbeddedListen)
	}
	dev, err := Parse([]byte("[mqtt]\ndev_broker = true\nembedded_listen = \"[::1]:18830\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.CheckBroker(false); err != nil {
		t.Errorf("dev_broker = true: %v", err)
	}
	withBroker, err := Parse([]byte("[mqtt]\nbroker = \"mqtts://broker.example.com:8883\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := withBroker.CheckBroker(false); err != nil {
		t.Errorf("with a broker: %v", err)
	}
}

// The embedded broker authenticates nobody: it may listen on loopback only.
func TestEmbeddedListenLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:1883", "127.0.0.2:0", "[::1]:1883", "localhost:1883"} {
		if _, err := Parse([]byte("[mqtt]\nembedded_listen = \"" + addr + "\"\n")); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}
	for _, addr := range []string{"0.0.0.0:1883", ":1883", "[::]:1883", "192.168.1.10:1883", "broker.example.com:1883", "127.0.0.1"} {
		_, err := Parse([]byte("[mqtt]\ndev_broker = true\nembedded_listen = \"" + addr + "\"\n"))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "embedded_listen") {
			t.Errorf("%s: %v, want ErrInvalid naming embedded_listen", addr, err)
		}
		if addr != "127.0.0.1" && !errors.Is(err, ErrNotLoopback) {
			t.Errorf("%s: %v, want ErrNotLoopback", addr, err)
		}
	}
	if _, err := Parse([]byte("[mqtt]\nbroker = \"mqtts://b:8883\"\ndev_broker = true\n")); !errors.Is(err, ErrInvalid) {
		t.Errorf("broker and dev_broker: %v, want ErrInvalid", err)
	}
}

// [yubikey] hotplug: on unless set to false; a value that is not a boolean is refused.
func TestYubiKeyHotplug(t *testing.T) {
	for text, want := range map[string]bool{"": true, "[yubikey]\nhotplug = true": true, "[yubikey]\nhotplug = false": false} {
		c, err := Parse([]byte(text))
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if c.YubiKey.HotplugOn() != want {
			t.Errorf("%q: hotplug %v, want %v", text, c.YubiKey.HotplugOn(), want)
		}
	}
	if _, err := Parse([]byte("[yubikey]\nhotplug = \"no\"")); !errors.Is(err, ErrInvalid) {
		t.Errorf("hotplug = \"no\": %v, want ErrInvalid", err)
	}
}
