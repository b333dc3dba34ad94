package appliance

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
)

// LoadConfig lets a configuration without a broker through only in development mode,
// and the embedded broker only on loopback.
func TestLoadConfigBrokerRequired(t *testing.T) {
	if softhsm.ModulePath() == "" {
		t.Skip("development mode makes a SoftHSM2 token; softhsm2 is not installed (make deps)")
	}
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte("device_id = \"ihsm-x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	t.Setenv("SOFTHSM2_CONF", "") // development mode sets it for the process
	load := func(src Source) error {
		src.StateDir = state
		_, err := LoadConfig(src)
		return err
	}
	if err := load(Source{File: path}); !errors.Is(err, config.ErrNoBroker) {
		t.Errorf("no broker, no --dev: %v, want ErrNoBroker", err)
	}
	if err := load(Source{File: path, Dev: true}); err != nil {
		t.Errorf("--dev: %v", err)
	}
	if err := load(Source{Dev: true, DevListen: "127.0.0.1:18830"}); err != nil {
		t.Errorf("--dev --dev-listen 127.0.0.1:18830: %v", err)
	}
	if err := load(Source{Dev: true, DevListen: "0.0.0.0:18830"}); !errors.Is(err, config.ErrNotLoopback) {
		t.Errorf("--dev-listen 0.0.0.0: %v, want ErrNotLoopback", err)
	}
	if err := load(Source{File: path, DevListen: "127.0.0.1:18830"}); !errors.Is(err, config.ErrNoBroker) {
		t.Errorf("--dev-listen without --dev: %v, want ErrNoBroker", err)
	}
}
