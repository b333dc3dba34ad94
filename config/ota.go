package config

import (
	"fmt"
	"time"
)

// OTA configures over-the-air updates (docs/ota.md).
//
//	[ota]
//	mode = "binary"                      # binary | rauc | off
//	public_keys = ["RWQ..."]             # minisign public keys (key line or .pub path)
//	window = "2m"                        # how long an update has to become healthy
//	max_size = 268435456                 # bytes
//	download_dir = "/var/lib/iot-hsm/ota/download"
//	binary = "/usr/local/lib/iot-hsm/iot-hsm"   # binary mode: the file an update replaces
//	rauc_bus = ""                        # rauc mode: D-Bus address; "" is the system bus
//	reboot_command = ["systemctl", "reboot"]
type OTA struct {
	Mode          string        `toml:"mode"`
	PublicKeys    []string      `toml:"public_keys"`
	Window        time.Duration `toml:"window"`
	MaxSize       int64         `toml:"max_size"`
	DownloadDir   string        `toml:"download_dir"`
	Binary        string        `toml:"binary"`
	RAUCBus       string        `toml:"rauc_bus"`
	RebootCommand []string      `toml:"reboot_command"`
}

// OTA defaults.
const (
	DefaultOTAWindow  = 2 * time.Minute
	DefaultOTAMaxSize = 256 << 20
)

// Effective returns the settings with their defaults applied (the download directory
// defaults to <state_dir>/ota/download), and checks them.
func (o OTA) Effective(stateDir string) (OTA, error) {
	if o.Mode == "" {
		o.Mode = "off"
	}
	if o.Window == 0 {
		o.Window = DefaultOTAWindow
	}
	if o.MaxSize == 0 {
		o.MaxSize = DefaultOTAMaxSize
	}
	if o.DownloadDir == "" {
		o.DownloadDir = stateDir + "/ota/download"
	}
	if len(o.RebootCommand) == 0 {
		o.RebootCommand = []string{"systemctl", "reboot"}
	}
	switch o.Mode {
	case "off", "rauc":
	case "binary":
		if len(o.PublicKeys) == 0 {
			return o, fmt.Errorf("%w: ota: binary mode needs public_keys (minisign)", ErrInvalid)
		}
	default:
		return o, fmt.Errorf("%w: ota.mode %q (want binary, rauc or off)", ErrInvalid, o.Mode)
	}
	if o.Window < 5*time.Second || o.Window > time.Hour {
		return o, fmt.Errorf("%w: ota.window %s (want 5s..1h)", ErrInvalid, o.Window)
	}
	if o.MaxSize < 0 {
		return o, fmt.Errorf("%w: ota.max_size must be positive", ErrInvalid)
	}
	return o, nil
}
