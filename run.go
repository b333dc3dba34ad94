package main

import (
	"flag"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/daemon"
)

// runCmd is `iot-hsm run`: the daemon (internal/daemon) over the appliance
// (internal/appliance).
func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	f := daemon.Flags{Version: version}
	fs.StringVar(&f.Config, "config", "", "configuration file (TOML)")
	fs.BoolVar(&f.Dev, "dev", false, "development mode: a SoftHSM2 token in the state directory and, without a configured broker, the embedded broker (loopback, no authentication)")
	fs.StringVar(&f.StateDir, "state-dir", "", "state directory (overrides the configuration)")
	fs.StringVar(&f.DevListen, "dev-listen", "", "loopback address of the embedded broker in --dev mode (default "+config.DefaultEmbeddedListen+")")
	fs.Parse(args)
	return daemon.Run(f)
}
