package appliance

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
)

// DevToken makes (once) a SoftHSM2 token under the state directory and configures it.
func DevToken(cfg *config.Config) error {
	dir := filepath.Join(cfg.StateDir, "softhsm")
	tok, err := softhsm.Open(dir, "iot-hsm-dev")
	if errors.Is(err, os.ErrNotExist) {
		tok, err = softhsm.Create(dir, "iot-hsm-dev")
		if err == nil {
			slog.Info("created a SoftHSM2 development token", "dir", dir, "serial", tok.Serial)
		}
	}
	if err != nil {
		return fmt.Errorf("dev token: %w", err)
	}
	// SoftHSM2 reads this in every C_Initialize, so it stays set for the process.
	os.Setenv("SOFTHSM2_CONF", tok.Conf)
	cfg.PKCS11 = append(cfg.PKCS11, config.PKCS11{Module: tok.Module, Token: "pkcs11:serial=" + tok.Serial, PIN: tok.PIN})
	return nil
}

// Source says where the configuration comes from: a file, or development mode, and
// what the command line sets over it.
type Source struct {
	File      string // the configuration file; "" only in development mode
	Dev       bool   // a SoftHSM2 token in the state directory and the embedded broker
	StateDir  string // overrides state_dir
	DevListen string // the embedded broker's address in development mode
}

// LoadConfig reads the configuration and applies the command line over it. Without
// a broker it is refused outside development mode: the daemon would serve everyone
// who reaches the embedded one. In development mode the SoftHSM2 token is made
// (once) and configured.
func LoadConfig(src Source) (*config.Config, error) {
	cfg := config.Default()
	switch {
	case src.File != "":
		var err error
		if cfg, err = config.Load(src.File); err != nil {
			return nil, err
		}
	case src.Dev:
		cfg.StateDir = "iot-hsm-dev"
	}
	if src.StateDir != "" {
		cfg.StateDir = src.StateDir
	}
	if src.DevListen != "" && !src.Dev {
		return nil, fmt.Errorf("%w: --dev-listen is the embedded broker's address, which runs only with --dev", config.ErrNoBroker)
	}
	if src.DevListen != "" {
		if err := config.CheckEmbeddedListen(src.DevListen); err != nil {
			return nil, err
		}
		cfg.MQTT.Broker, cfg.MQTT.EmbeddedListen = "", src.DevListen
	}
	if err := cfg.CheckBroker(src.Dev); err != nil {
		return nil, err
	}
	if src.Dev {
		if err := DevToken(cfg); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}
