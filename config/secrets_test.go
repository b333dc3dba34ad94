package config

import (
	"errors"
	"testing"
)

func TestSecretsKeyFile(t *testing.T) {
	c, err := Parse([]byte("[secrets]\nkey_file = \"/boot/iot-hsm/secrets.key\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Secrets.Key(); got != "/boot/iot-hsm/secrets.key" {
		t.Fatalf("key file %q", got)
	}
	if got := Default().Secrets.Key(); got != "/etc/iot-hsm/secrets.key" {
		t.Fatalf("default key file %q", got)
	}
	if _, err := Parse([]byte("[secrets]\nkey = \"/x\"\n")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("misspelt setting: %v", err)
	}
}
