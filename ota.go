package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/leds"
	"github.com/iot-hsm/iot-hsm/ota"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// reexecPath, once an update replaced the binary, is what a restart without systemd
// executes: /proc/self/exe would run the replaced binary again.
var reexecPath string

// selfPath is the running binary's path, taken before an update can rename it.
func selfPath() string {
	p, err := os.Executable()
	if err != nil {
		return ""
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// otaBootCheck runs before anything else at start-up: a binary on trial that already
// started without proving itself is replaced by the previous one, and the daemon
// restarts into it.
func (d *daemon) otaBootCheck() (restart bool) {
	if d.cfg.OTA.Mode != ota.ModeBinary {
		return false
	}
	rb, err := ota.BootCheck(d.cfg.StateDir)
	if err != nil {
		slog.Error("ota: boot check", "err", err)
	}
	if rb {
		reexecPath = d.otaBinary()
	}
	return rb
}

func (d *daemon) otaBinary() string {
	if d.cfg.OTA.Binary != "" {
		return d.cfg.OTA.Binary
	}
	return d.exe
}

// openOTA makes the updater from the configuration; with ota.mode = "off" it
// refuses every update and ota.status says so.
func (d *daemon) openOTA() error {
	oc, err := d.cfg.OTA.Effective(d.cfg.StateDir)
	if err != nil {
		return err
	}
	keys, err := ota.ParseKeys(oc.PublicKeys)
	if err != nil {
		return fmt.Errorf("%w: ota.public_keys: %v", config.ErrInvalid, err)
	}
	o := ota.Options{Mode: oc.Mode, Keys: keys, Window: oc.Window, MaxSize: oc.MaxSize, DownloadDir: oc.DownloadDir,
		StateDir: d.cfg.StateDir, Binary: d.otaBinary(), Version: version,
		Event: func(e protocol.OTAEvent) {
			slog.Info("ota", "phase", e.Phase, "percent", e.Percent, "message", e.Message)
			if d.dev != nil {
				d.dev.OTAEvent(e)
			}
		},
		Busy: func(updating bool) {
			if updating {
				d.leds.Load().SetPhase(leds.Updating)
			} else {
				d.leds.Load().SetPhase(leds.Running)
			}
		},
		Health: func() ota.Health { return ota.HealthOf(d.dev.Status(), d.cfg != nil) },
		Restart: func() {
			reexecPath = d.otaBinary()
			poke(d.restarts)
		},
		Reboot: func() {
			cmd := oc.RebootCommand
			d.afterStop = func() error {
				slog.Info("ota: rebooting", "command", cmd)
				out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
				if err != nil {
					return fmt.Errorf("ota: reboot: %v: %s", err, out)
				}
				return nil
			}
			poke(d.restarts)
		},
	}
	if oc.Mode == ota.ModeRAUC {
		if o.RAUC, err = ota.DialRAUC(oc.RAUCBus); err != nil {
			return err
		}
	}
	d.ota, err = ota.New(o)
	return err
}

// otaHooks are the device's ota commands.
func (d *daemon) otaHooks() device.OTAHooks {
	if d.ota == nil {
		return device.OTAHooks{}
	}
	return device.OTAHooks{
		Update: func(a protocol.OTAUpdateArgs) (any, error) {
			st, err := d.ota.Start(a)
			switch {
			case errors.Is(err, ota.ErrBusy):
				return nil, fmt.Errorf("%w: %v", device.ErrConflict, err)
			case err != nil:
				return nil, fmt.Errorf("%w: %v", device.ErrBadRequest, err)
			}
			return st, nil
		},
		Status: func() any { return d.ota.Status() },
	}
}
