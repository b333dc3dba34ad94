package appliance

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/ota"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// OTAOptions are what the updater needs of the daemon around the appliance.
type OTAOptions struct {
	Version string
	// Exe is the running binary's path, taken before an update can rename it; it is
	// what binary mode replaces unless ota.binary says otherwise.
	Exe string
	// Busy is told when an update starts and ends (the LEDs show it).
	Busy func(updating bool)
	// Restart restarts the daemon into binary once it has stopped.
	Restart func(binary string)
	// Reboot reboots the machine with command once the daemon has stopped (RAUC).
	Reboot func(command []string)
}

// OTABinary is the binary an update in binary mode replaces.
func OTABinary(cfg *config.Config, exe string) string {
	if cfg.OTA.Binary != "" {
		return cfg.OTA.Binary
	}
	return exe
}

// OTABootCheck runs before anything else at start-up: a binary on trial that
// already started without proving itself is put back by the previous one, and the
// daemon must restart into it (restart true).
func OTABootCheck(cfg *config.Config) (restart bool) {
	if cfg.OTA.Mode != ota.ModeBinary {
		return false
	}
	rb, err := ota.BootCheck(cfg.StateDir)
	if err != nil {
		slog.Error("ota: boot check", "err", err)
	}
	return rb
}

// OpenOTA makes the updater from the configuration (with ota.mode = "off" it refuses
// every update, and ota.status says so). Start gives the device its commands.
func (a *Appliance) OpenOTA(o OTAOptions) (*ota.Updater, error) {
	cfg := a.cfg
	oc, err := cfg.OTA.Effective(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	keys, err := ota.ParseKeys(oc.PublicKeys)
	if err != nil {
		return nil, fmt.Errorf("%w: ota.public_keys: %v", config.ErrInvalid, err)
	}
	binary := OTABinary(cfg, o.Exe)
	opts := ota.Options{Mode: oc.Mode, Keys: keys, Window: oc.Window, MaxSize: oc.MaxSize, DownloadDir: oc.DownloadDir,
		StateDir: cfg.StateDir, Binary: binary, Version: o.Version,
		Event: func(e protocol.OTAEvent) {
			slog.Info("ota", "phase", e.Phase, "percent", e.Percent, "message", e.Message)
			if a.Device != nil {
				a.Device.OTAEvent(e)
			}
		},
		Busy:    o.Busy,
		Health:  func() ota.Health { return ota.HealthOf(a.Device.Status(), true) },
		Restart: func() { o.Restart(binary) },
		Reboot:  func() { o.Reboot(oc.RebootCommand) },
	}
	if oc.Mode == ota.ModeRAUC {
		if opts.RAUC, err = ota.DialRAUC(oc.RAUCBus); err != nil {
			return nil, err
		}
	}
	if a.ota, err = ota.New(opts); err != nil {
		return nil, err
	}
	return a.ota, nil
}

// otaHooks are the device's ota commands over the updater, if there is one.
func (a *Appliance) otaHooks() device.OTAHooks {
	if a.ota == nil {
		return device.OTAHooks{}
	}
	u := a.ota
	return device.OTAHooks{
		Update: func(args protocol.OTAUpdateArgs) (any, error) {
			st, err := u.Start(args)
			switch {
			case errors.Is(err, ota.ErrBusy):
				return nil, fmt.Errorf("%w: %v", device.ErrConflict, err)
			case err != nil:
				return nil, fmt.Errorf("%w: %v", device.ErrBadRequest, err)
			}
			return st, nil
		},
		Status: func() any { return u.Status() },
	}
}
