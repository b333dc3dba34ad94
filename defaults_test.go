package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/iot-hsm/iot-hsm/config"
)

// loadConfig lets a configuration without a broker through only in development mode,
// and the embedded broker only on loopback.
func TestLoadConfigBrokerRequired(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte("device_id = \"ihsm-x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(f runFlags) error {
		_, err := (&daemon{flags: f}).loadConfig()
		return err
	}
	if err := load(runFlags{config: path}); !errors.Is(err, config.ErrNoBroker) {
		t.Errorf("no broker, no --dev: %v, want ErrNoBroker", err)
	}
	if err := load(runFlags{config: path, dev: true}); err != nil {
		t.Errorf("--dev: %v", err)
	}
	if err := load(runFlags{dev: true, devListen: "127.0.0.1:18830"}); err != nil {
		t.Errorf("--dev --dev-listen 127.0.0.1:18830: %v", err)
	}
	if err := load(runFlags{dev: true, devListen: "0.0.0.0:18830"}); !errors.Is(err, config.ErrNotLoopback) {
		t.Errorf("--dev-listen 0.0.0.0: %v, want ErrNotLoopback", err)
	}
	if err := load(runFlags{config: path, devListen: "127.0.0.1:18830"}); !errors.Is(err, config.ErrNoBroker) {
		t.Errorf("--dev-listen without --dev: %v, want ErrNoBroker", err)
	}
}
