package config

import (
	"errors"
	"os"
	"path/filepath"
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
