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
