package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"strings"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/leds"
	"github.com/iot-hsm/iot-hsm/protocol"
)

type reloadRequest struct {
	ctx  context.Context
	done chan reloadReply
}

type reloadReply struct {
	res protocol.ReloadResult
	err error
}

// reloadFromCommand runs a reload command on the main loop, which owns the
// configuration, and waits for its outcome.
func (d *daemon) reloadFromCommand(ctx context.Context) (any, error) {
	req := reloadRequest{ctx: ctx, done: make(chan reloadReply, 1)}
	select {
	case d.reloads <- req:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-req.done:
		if r.err != nil {
			return nil, r.err
		}
		return r.res, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// reload (main loop) re-reads the configuration, rescans the HSMs and reopens what
// changed, keeping the broker session and the slots' state. systemd hears
// RELOADING=1 first and READY=1 last, whatever the outcome: a rejected configuration
// leaves the running one in place, which is ready.
func (d *daemon) reload(ctx context.Context) (protocol.ReloadResult, error) {
	slog.Info("reloading the configuration", "file", d.flags.Config)
	d.sd.Reloading("reloading the configuration")
	d.leds.Load().SetPhase(leds.Reloading)
	res, err := d.applyReload(ctx)
	switch {
	case err != nil:
		d.note = "last reload rejected, running configuration kept: " + err.Error()
	case len(res.RestartRequired) > 0:
		d.note = "restart required for: " + strings.Join(res.RestartRequired, ", ")
	default:
		d.note = ""
	}
	d.leds.Load().SetPhase(leds.Running)
	d.sd.Ready(d.statusLine(d.refreshLEDs()))
	return res, err
}

func (d *daemon) applyReload(ctx context.Context) (protocol.ReloadResult, error) {
	res := protocol.ReloadResult{Applied: []string{}}
	cfg, err := d.loadConfig()
	if err != nil {
		slog.Error("configuration rejected; the running one is kept", "err", err)
		return res, fmt.Errorf("%w: %v", device.ErrBadRequest, err)
	}
	old := d.cfg
	var applied []string
	// LEDs first: with on_error = "fail" an LED that does not open rejects the
	// reload before anything else changed.
	if !reflect.DeepEqual(old.LEDs, cfg.LEDs) {
		if err := d.reopenLEDs(old.LEDs, cfg.LEDs); err != nil {
			slog.Error("LEDs rejected; the running configuration is kept", "err", err)
			return res, fmt.Errorf("%w: %v", device.ErrBadRequest, err)
		}
		applied = append(applied, "leds")
	}
	if cfg.LogLevel != old.LogLevel {
		setupLogging(d.level, cfg.LogLevel)
		applied = append(applied, "log_level")
	}
	if cfg.Service != old.Service {
		applied = append(applied, "service")
	}
	res = d.app.Reload(ctx, cfg, applied)
	d.cfg = d.app.Config()
	return res, nil
}

// reopenLEDs moves to a new LED assignment. The old one is released first (the new
// one may use the same lines); when the new one does not open, the old one is put
// back and the error rejects the reload.
func (d *daemon) reopenLEDs(oldCfg, newCfg config.LEDs) error {
	d.leds.Load().Close()
	nc, err := leds.Open(newCfg)
	if err != nil {
		back, berr := leds.Open(oldCfg)
		if berr != nil {
			slog.Error("the previous LEDs do not open again either; LEDs dark until restart", "err", berr)
			back, _ = leds.Open(config.LEDs{})
		}
		d.installLEDs(back)
		return err
	}
	d.installLEDs(nc)
	return nil
}

func (d *daemon) installLEDs(c *leds.Controller) {
	c.SetPhase(leds.Reloading)
	c.SetFault(d.fault)
	d.leds.Store(c)
}
