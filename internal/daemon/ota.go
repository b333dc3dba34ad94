package daemon

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/leds"
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

// openOTA makes the updater; the daemon shows an update on the LEDs and restarts
// or reboots when it asks.
func (d *daemon) openOTA() error {
	u, err := d.app.OpenOTA(appliance.OTAOptions{Version: d.flags.Version, Exe: d.exe,
		Busy: func(updating bool) {
			if updating {
				d.leds.Load().SetPhase(leds.Updating)
			} else {
				d.leds.Load().SetPhase(leds.Running)
			}
		},
		Restart: func(binary string) {
			reexecPath = binary
			poke(d.restarts)
		},
		Reboot: func(cmd []string) {
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
	})
	d.ota = u
	return err
}
