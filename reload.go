package main

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"strings"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/leds"
)

// reloadResult is the reply to the reload command.
type reloadResult struct {
	// Applied is what changed and took effect.
	Applied []string `json:"applied"`
	// RestartRequired is what changed in the file but runs on until a restart (the
	// broker session, the device's identity and topics, the state directory...).
	RestartRequired []string `json:"restart_required,omitempty"`
	// Problems are parts that did not come up (a PKCS#11 module that does not load);
	// the rest of the reload stands.
	Problems    []string `json:"problems,omitempty"`
	HSMs        int      `json:"hsms"`
	HSMsPresent int      `json:"hsms_present"`
}

type reloadRequest struct {
	ctx  context.Context
	done chan reloadReply
}

type reloadReply struct {
	res reloadResult
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
func (d *daemon) reload(ctx context.Context) (reloadResult, error) {
	slog.Info("reloading the configuration", "file", d.flags.config)
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

func (d *daemon) applyReload(ctx context.Context) (reloadResult, error) {
	res := reloadResult{Applied: []string{}}
	cfg, err := d.loadConfig()
	if err == nil && d.flags.dev {
		err = devToken(cfg)
	}
	if err != nil {
		slog.Error("configuration rejected; the running one is kept", "err", err)
		return res, fmt.Errorf("%w: %v", device.ErrBadRequest, err)
	}
	old := d.cfg
	// LEDs first: with on_error = "fail" an LED that does not open rejects the
	// reload before anything else changed.
	if !reflect.DeepEqual(old.LEDs, cfg.LEDs) {
		if err := d.reopenLEDs(old.LEDs, cfg.LEDs); err != nil {
			slog.Error("LEDs rejected; the running configuration is kept", "err", err)
			return res, fmt.Errorf("%w: %v", device.ErrBadRequest, err)
		}
		res.Applied = append(res.Applied, "leds")
	}
	if cfg.LogLevel != old.LogLevel {
		setupLogging(d.level, cfg.LogLevel)
		res.Applied = append(res.Applied, "log_level")
	}
	if cfg.Service != old.Service {
		res.Applied = append(res.Applied, "service")
	}
	applied, restart, problems := d.core.pkcs11.configure(ctx, cfg.PKCS11)
	res.Applied = append(res.Applied, applied...)
	res.RestartRequired = append(restartRequired(old, cfg), restart...)
	res.Problems = problems
	applied, problems, trustOK := d.reloadTrust(cfg.Trust)
	res.Applied = append(res.Applied, applied...)
	res.Problems = append(res.Problems, problems...)

	// What waits for a restart keeps its running value, so the next reload reports
	// it again rather than forgetting it.
	next := *old
	next.LogLevel, next.Service, next.LEDs, next.PKCS11 = cfg.LogLevel, cfg.Service, cfg.LEDs, cfg.PKCS11
	if trustOK {
		next.Trust = cfg.Trust
	}
	d.cfg = &next

	d.dev.Reloaded()
	for _, t := range d.core.registry.Tokens() {
		res.HSMs++
		if t.Info().Present {
			res.HSMsPresent++
		}
	}
	slog.Info("configuration reloaded", "applied", res.Applied, "restart_required", res.RestartRequired,
		"problems", res.Problems, "hsms", res.HSMs, "present", res.HSMsPresent)
	return res, nil
}

// restartRequired names the settings that changed but only take effect at start:
// the broker session is kept across a reload, and with it the device's identity.
func restartRequired(old, cfg *config.Config) []string {
	var out []string
	add := func(changed bool, name string) {
		if changed {
			out = append(out, name)
		}
	}
	add(old.DeviceID != cfg.DeviceID, "device_id")
	add(old.StateDir != cfg.StateDir, "state_dir")
	add(old.TopicRoot != cfg.TopicRoot, "topic_root")
	add(old.QueueSize != cfg.QueueSize, "queue_size")
	add(old.AllowDigest != cfg.AllowDigest, "allow_digest")
	add(old.MQTT != cfg.MQTT, "mqtt")
	add(!reflect.DeepEqual(old.YubiKey, cfg.YubiKey), "yubikey")
	add(!reflect.DeepEqual(old.CloudKMS, cfg.CloudKMS), "cloudkms")
	add(old.Secrets != cfg.Secrets, "secrets")
	// The updater holds its keys and mode from the start; a mode changed under an
	// update on trial would leave it half in the old one.
	add(!reflect.DeepEqual(old.OTA, cfg.OTA), "ota")
	return out
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
