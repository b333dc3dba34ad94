// Package appliance wires the appliance from its configuration: the state store,
// the HSM backends and their registry, the audit trail, the sealed PINs, the device
// core and its broker session. `iot-hsm run`, the end-to-end and daemon tests and the
// benchmarks all build the appliance here, so they exercise the code that runs.
//
// Open brings up what holds state (Open, then Close); Start connects it to the broker
// (Start, then Stop); Reload applies a new configuration to what runs. The daemon
// keeps the rest: flags, signals, systemd, LEDs and updates.
package appliance

import (
	"context"
	"log/slog"
	"path/filepath"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/ota"
	"github.com/iot-hsm/iot-hsm/secrets"
	"github.com/iot-hsm/iot-hsm/store"
	"github.com/iot-hsm/iot-hsm/web"
)

// Appliance is one appliance, wired from a configuration.
type Appliance struct {
	cfg      *config.Config // what runs now
	Store    *store.Store
	Registry *slots.Registry
	Slots    *slots.Slots
	Audit    *audit.Log
	Secrets  *secrets.Store // PINs stored by hsm.set_pin with persist, sealed
	pkcs11   *pkcs11.Set

	// Set by Start.
	Device   *device.Device
	Client   *mqtt.Client
	CAClient *mqtt.Client // the CA topics and the fleet's claims, on a clean session
	broker   *mqtt.Broker // the embedded one, in development mode
	trustSum string       // what the running verifier was made of (trust.go)
	ota      *ota.Updater // set by OpenOTA
	web      *web.Server  // the dashboard, when [web] turns it on
}

// Open opens the state store, the sealed PINs, the HSM backends and the audit
// trail. A PKCS#11 module that does not load does not take the appliance down: its
// slots show as disconnected and the error is in the log.
func Open(ctx context.Context, cfg *config.Config) (*Appliance, error) {
	st, err := store.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a := &Appliance{cfg: cfg, Store: st}
	if err := a.openHSMs(ctx); err != nil {
		st.Close()
		return nil, err
	}
	// The audit trail is checked whole at start-up: a tampered trail stops the
	// appliance rather than being extended.
	if a.Audit, err = audit.Open(filepath.Join(cfg.StateDir, "audit.log")); err != nil {
		a.Registry.Close()
		st.Close()
		return nil, err
	}
	a.Slots = &slots.Slots{Store: st, Registry: a.Registry}
	return a, nil
}

// openHSMs makes the backends the configuration names and scans them once.
func (a *Appliance) openHSMs(ctx context.Context) error {
	cfg := a.cfg
	sec, err := secrets.New(cfg.Secrets.Key(), cfg.StateDir)
	if err != nil {
		return err
	}
	a.Secrets = sec
	a.pkcs11 = &pkcs11.Set{}
	a.pkcs11.Configure(ctx, pkcs11Selections(cfg.PKCS11))
	providers := []hsm.Provider{a.pkcs11}
	if !cfg.YubiKey.Disabled {
		yk, err := yubikeyProvider(cfg.YubiKey)
		if err != nil {
			a.pkcs11.Close()
			return err
		}
		providers = append(providers, yk)
	}
	kms, err := cloudkmsProviders(cfg)
	if err != nil {
		for _, p := range providers {
			p.Close()
		}
		return err
	}
	providers = append(providers, kms...)
	// Stored PINs are tried once each, after the configured ones, as tokens are
	// first seen (at this scan, or later when plugged in).
	pins := secrets.NewApplier(sec, nil)
	pins.Configured = yubikeyPINConfigured(cfg.YubiKey)
	a.Registry = slots.NewRegistry(pins.Wrap(providers...)...)
	if err := a.Registry.Rescan(ctx); err != nil {
		slog.Warn("HSM scan incomplete", "err", err)
	}
	return nil
}

// pkcs11Selections are the [[pkcs11]] blocks as the PKCS#11 backend takes them.
func pkcs11Selections(cfgs []config.PKCS11) []pkcs11.Selection {
	out := make([]pkcs11.Selection, len(cfgs))
	for i, c := range cfgs {
		out[i] = pkcs11.Selection{Module: c.Module, Token: c.Token, PIN: c.ReadPIN}
	}
	return out
}

// Config is the configuration that runs now.
func (a *Appliance) Config() *config.Config { return a.cfg }

// LogInventory logs the HSMs and slots found at start-up.
func (a *Appliance) LogInventory() {
	for _, t := range a.Registry.Tokens() {
		info := t.Info()
		slog.Info("HSM", "id", info.ID, "kind", info.Kind, "model", info.Model, "present", info.Present, "pin_set", info.PIN.Set)
	}
	recs, err := a.Store.Slots()
	if err != nil {
		slog.Error("reading slot state", "err", err)
	}
	for _, r := range recs {
		slog.Info("slot", "slot_id", r.ID, "state", r.State, "key_type", r.KeyType, "ca_id", r.CAID)
	}
}

// Close closes the HSM backends, the state store and the audit trail. After a Stop
// that was not clean (a worker still inside a token call) it must not be called:
// unloading a module under that call could crash the exit.
func (a *Appliance) Close() {
	a.Registry.Close()
	a.Store.Close()
	a.Audit.Close()
}
