package appliance

import (
	"context"
	"log/slog"
	"reflect"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// Reload applies cfg to the running appliance: the PKCS#11 modules and their PINs
// (with a rescan), the controllers' bundle and CRLs, swapped whole. What runs on
// until a restart (the broker session, the device's identity, the other backends...)
// is named in RestartRequired and keeps its running value, so the next reload
// reports it again. The daemon applies its own parts (LEDs, log level, [service])
// before, and lists them in applied.
func (a *Appliance) Reload(ctx context.Context, cfg *config.Config, applied []string) protocol.ReloadResult {
	old := a.cfg
	res := protocol.ReloadResult{Applied: append([]string{}, applied...)}
	done, restart, problems := a.pkcs11.Configure(ctx, pkcs11Selections(cfg.PKCS11))
	res.Applied = append(res.Applied, done...)
	res.RestartRequired = append(restartRequired(old, cfg), restart...)
	res.Problems = problems
	done, problems, trustOK := a.reloadTrust(cfg.Trust)
	res.Applied = append(res.Applied, done...)
	res.Problems = append(res.Problems, problems...)

	next := *old
	next.LogLevel, next.Service, next.LEDs, next.PKCS11 = cfg.LogLevel, cfg.Service, cfg.LEDs, cfg.PKCS11
	if trustOK {
		next.Trust = cfg.Trust
	}
	a.cfg = &next

	a.Device.Reloaded()
	for _, t := range a.Registry.Tokens() {
		res.HSMs++
		if t.Info().Present {
			res.HSMsPresent++
		}
	}
	slog.Info("configuration reloaded", "applied", res.Applied, "restart_required", res.RestartRequired,
		"problems", res.Problems, "hsms", res.HSMs, "present", res.HSMsPresent)
	return res
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
	add(old.Fleet != cfg.Fleet, "fleet")
	add(!reflect.DeepEqual(old.YubiKey, cfg.YubiKey), "yubikey")
	add(!reflect.DeepEqual(old.CloudKMS, cfg.CloudKMS), "cloudkms")
	add(old.Secrets != cfg.Secrets, "secrets")
	// The updater holds its keys and mode from the start; a mode changed under an
	// update on trial would leave it half in the old one.
	add(!reflect.DeepEqual(old.OTA, cfg.OTA), "ota")
	add(webConfigChanged(old, cfg), "web")
	return out
}
