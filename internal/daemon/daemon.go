// Package daemon is `iot-hsm run`: the process around the appliance. It loads the
// configuration, opens and starts the appliance (internal/appliance), and owns what
// belongs to the process: signals, systemd's notify socket and watchdog, the LEDs,
// reloads and restarts, and the restart or reboot an update asks for. Its main loop
// owns the configuration; everything that changes it goes through the loop.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/device/hotplug"
	"github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/leds"
	"github.com/iot-hsm/iot-hsm/ota"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
	"github.com/iot-hsm/iot-hsm/systemd"
)

// exitRestart is the exit code of the restart command under systemd (EX_TEMPFAIL).
// The unit lists it in RestartForceExitStatus= (restart whatever Restart= says) and
// SuccessExitStatus= (not a failure in `systemctl status`).
const exitRestart = 75

// Flags are the run subcommand's flags; a reload applies them again.
type Flags struct {
	Config    string // the configuration file
	Dev       bool   // development mode (appliance.Source)
	StateDir  string // overrides state_dir
	DevListen string // the embedded broker's address in development mode
	Version   string // the running build's version
}

// Run runs the daemon until SIGTERM or SIGINT, or restarts it (re-executing
// itself, exiting for systemd, or rebooting after an image update) when asked to.
func Run(f Flags) error {
	if f.Config == "" && !f.Dev {
		return errors.New("run: give --config FILE, or --dev for a lab setup")
	}
	d := &daemon{flags: f, level: new(slog.LevelVar),
		reloads: make(chan reloadRequest), restarts: make(chan struct{}, 1), changed: make(chan struct{}, 1)}
	d.exe = selfPath()
	restart, err := d.run()
	if err != nil {
		return err
	}
	if restart && d.afterStop != nil {
		return d.afterStop()
	}
	if restart {
		return restartSelf()
	}
	return nil
}

// daemon is the running appliance: the core, its broker session, and what shows its
// state (systemd, LEDs). Its main loop owns the configuration; everything that
// changes it (SIGHUP, the reload command) goes through the loop.
type daemon struct {
	flags Flags
	cfg   *config.Config // what runs now
	level *slog.LevelVar

	sd   *systemd.Notifier
	leds atomic.Pointer[leds.Controller] // swapped by a reload; workers flash it
	app  *appliance.Appliance
	dev  *device.Device // app.Device, once started

	reloads  chan reloadRequest
	restarts chan struct{}
	changed  chan struct{} // the status changed: refresh STATUS and the LEDs

	fault string // a wedged loop, while it lasts
	note  string // the last reload's outcome when the operator should see it

	exe       string       // the running binary's path (ota.go)
	ota       *ota.Updater // over-the-air updates (ota.go)
	afterStop func() error // instead of a restart: the reboot of an image update
}

// run starts the appliance, serves until SIGTERM/SIGINT or the restart command, and
// shuts down. restart is true for the restart command.
func (d *daemon) run() (restart bool, err error) {
	if d.cfg, err = d.loadConfig(); err != nil {
		return false, err
	}
	setupLogging(d.level, d.cfg.LogLevel)
	if appliance.OTABootCheck(d.cfg) {
		reexecPath = appliance.OTABinary(d.cfg, d.exe)
		return true, nil
	}
	// Signals are taken from here on: a SIGTERM during start-up is served as soon as
	// the loop runs, a SIGHUP is a reload once ready.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	d.sd = systemd.New()
	d.sd.Status("starting: opening the state and scanning HSMs")
	lc, err := leds.Open(d.cfg.LEDs)
	if err != nil {
		return false, err
	}
	d.leds.Store(lc)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if d.app, err = appliance.Open(ctx, d.cfg); err != nil {
		lc.Close()
		return false, err
	}
	d.app.LogInventory()

	if err := d.openOTA(); err != nil {
		lc.Close()
		d.app.Close()
		return false, err
	}
	defer d.ota.Close()
	d.sd.Status("starting: connecting to the broker")
	if err := d.app.Start(ctx, d.hooks()); err != nil {
		lc.Close()
		d.app.Close()
		return false, err
	}
	d.dev = d.app.Device
	// USB and PC/SC events make a plugged or pulled YubiKey show within a second;
	// the device's own periodic scan catches what they miss.
	if d.cfg.YubiKey.HotplugOn() {
		hp := &hotplug.Watcher{OnChange: func(reason string) {
			slog.Debug("hotplug", "reason", reason)
			d.dev.CheckPresence()
		}}
		go hp.Run(ctx)
	} else {
		slog.Info("hotplug off ([yubikey] hotplug = false): tokens are seen by the periodic scan only")
	}
	slog.Info("iot-hsm running", "version", d.flags.Version, "device", d.dev.Topics().Device, "state_dir", d.cfg.StateDir,
		"watchdog", d.sd.WatchdogInterval()*2)
	// Ready after one broker attempt, whatever its outcome: a broker that is down must
	// not hold the service in "activating". STATUS says it is down; the session keeps
	// retrying.
	lc.SetPhase(leds.Running)
	d.sd.Ready(d.statusLine(d.refreshLEDs()))
	d.ota.Trial()

	restart = d.loop(sigs)
	d.shutdown()
	return restart, nil
}

// loop is the daemon's main loop. It is also what the watchdog measures: pings go out
// from here, so a loop stuck in a reload stops them as a wedged worker does.
func (d *daemon) loop(sigs <-chan os.Signal) (restart bool) {
	t := time.NewTicker(d.tickInterval())
	defer t.Stop()
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if _, err := d.reload(context.Background()); err != nil {
					slog.Error("reload (SIGHUP) rejected", "err", err)
				}
				continue
			}
			slog.Info("stopping", "signal", sig.String())
			return false
		case req := <-d.reloads:
			res, err := d.reload(req.ctx)
			req.done <- reloadReply{res, err}
		case <-d.restarts:
			slog.Info("restart requested")
			return true
		case <-d.changed:
			d.refresh()
		case <-t.C:
			d.checkHealth()
			d.refresh()
		}
	}
}

// tickInterval is how often the loop checks health and pings: half of WATCHDOG_USEC
// (sd_watchdog_enabled(3)), and at least every 5 s so STATUS and LEDs catch up with
// what no event reports.
func (d *daemon) tickInterval() time.Duration {
	const refresh = 5 * time.Second
	if wd := d.sd.WatchdogInterval(); wd > 0 && wd < refresh {
		return wd
	}
	return refresh
}

// checkHealth pings the watchdog only while every token worker and the presence
// watch answer (the loop itself answers, or it would not be here).
func (d *daemon) checkHealth() {
	err := d.dev.Healthy(d.cfg.Service.HungGrace)
	switch {
	case err == nil && d.fault != "":
		slog.Info("device loops answer again; watchdog pings resume")
		d.fault = ""
		d.leds.Load().SetFault("")
	case err != nil:
		if d.fault == "" {
			slog.Error("device loop wedged; watchdog pings stop so that systemd restarts the service", "err", err)
		}
		d.fault = err.Error() // kept current: it says for how long
		d.leds.Load().SetFault(d.fault)
	}
	if err == nil {
		d.sd.Ping()
	}
}

// refresh brings STATUS and the LEDs up to date.
func (d *daemon) refresh() {
	d.sd.Status(d.statusLine(d.refreshLEDs()))
}

func (d *daemon) refreshLEDs() protocol.Status {
	st := d.dev.Status()
	d.leds.Load().Update(st)
	return st
}

// statusLine is the one line `systemctl status` shows, e.g.
// "2/3 CA slots connected; broker up; 1/1 HSMs present".
func (d *daemon) statusLine(st protocol.Status) string {
	provisioned := 0
	for _, s := range st.Slots {
		if s.State == string(store.Provisioned) {
			provisioned++
		}
	}
	var parts []string
	if provisioned == 0 {
		parts = append(parts, "no CA slot provisioned yet")
	} else {
		parts = append(parts, fmt.Sprintf("%d/%d CA slots connected", st.ConnectedSlots, provisioned))
	}
	if st.Broker == "connected" {
		parts = append(parts, "broker up")
	} else {
		parts = append(parts, "broker down, retrying")
	}
	present := 0
	for _, h := range st.HSMs {
		if h.Present {
			present++
		}
	}
	parts = append(parts, fmt.Sprintf("%d/%d HSMs present", present, len(st.HSMs)))
	if d.fault != "" {
		parts = append(parts, "watchdog pings stopped: "+d.fault)
	}
	if d.note != "" {
		parts = append(parts, d.note)
	}
	return strings.Join(parts, "; ")
}

// shutdown: STOPPING=1, no new requests, running ones finished or failed within
// service.stop_timeout, the offline status published, a clean disconnect.
func (d *daemon) shutdown() {
	slog.Info("iot-hsm stopping")
	d.sd.Stopping("stopping: finishing requests in flight")
	d.leds.Load().SetPhase(leds.Stopping)
	clean := d.app.Stop()
	d.leds.Load().Close()
	if !clean {
		// A worker is still inside a token call: unloading the module or closing
		// the store under it could crash the exit. The kernel releases both.
		slog.Error("requests still running at exit; HSMs and state left to the exit to close", "stop_timeout", d.cfg.Service.StopTimeout)
		return
	}
	d.app.Close()
}

// hooks are what the appliance tells the daemon, and what the daemon runs for the
// device's lifecycle commands.
func (d *daemon) hooks() appliance.Hooks {
	return appliance.Hooks{
		Version:          d.flags.Version,
		OnChange:         func(protocol.Status) { poke(d.changed) },
		OnConnectionLost: func() { poke(d.changed) },
		OnSign: func(slotID string, e *protocol.Error) {
			code := ""
			if e != nil {
				code = e.Code
			}
			d.leds.Load().Signed(slotID, code)
		},
		Reload:  d.reloadFromCommand,
		Restart: func() { poke(d.restarts) },
		LEDs:    d.ledPatterns,
	}
}

// restartSelf follows the restart command once everything is closed. Under systemd
// the process exits with exitRestart and systemd starts it again; elsewhere it
// replaces itself with a fresh run of the same binary and arguments.
func restartSelf() error {
	if systemd.Supervised() {
		slog.Info("exiting so that systemd restarts the service", "exit_code", exitRestart)
		os.Exit(exitRestart)
	}
	exe := "/proc/self/exe"
	if reexecPath != "" {
		exe = reexecPath // an update replaced the binary
	}
	slog.Info("restarting: re-executing", "exe", exe, "args", os.Args)
	err := syscall.Exec(exe, os.Args, os.Environ())
	return fmt.Errorf("restart: exec %s: %w", exe, err)
}

// loadConfig reads the configuration the flags name.
func (d *daemon) loadConfig() (*config.Config, error) {
	return appliance.LoadConfig(appliance.Source{File: d.flags.Config, Dev: d.flags.Dev, StateDir: d.flags.StateDir, DevListen: d.flags.DevListen})
}

// poke wakes a loop through a channel with room for one wake-up, without blocking:
// wake-ups that come while one is pending merge into it.
func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// setupLogging logs text to stderr (the journal under systemd) at a level a reload
// can change.
func setupLogging(lv *slog.LevelVar, level string) {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	lv.Set(l)
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv})))
}

// ledPatterns names what each LED shows, sorted, for the dashboard.
func (d *daemon) ledPatterns() []string {
	var out []string
	for name, p := range d.leds.Load().Patterns() {
		out = append(out, name+": "+p.String())
	}
	sort.Strings(out)
	return out
}
