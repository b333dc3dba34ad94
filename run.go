package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/store"
)

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	cfgPath := fs.String("config", "", "configuration file (TOML)")
	dev := fs.Bool("dev", false, "development mode: a SoftHSM2 token in the state directory")
	stateDir := fs.String("state-dir", "", "state directory (overrides the configuration)")
	fs.Parse(args)

	cfg := &config.Config{StateDir: config.DefaultStateDir, LogLevel: config.DefaultLogLevel}
	switch {
	case *cfgPath != "":
		var err error
		if cfg, err = config.Load(*cfgPath); err != nil {
			return err
		}
	case *dev:
		cfg.StateDir = "iot-hsm-dev"
	default:
		return errors.New("run: give --config FILE, or --dev for a lab setup")
	}
	if *stateDir != "" {
		cfg.StateDir = *stateDir
	}
	setupLogging(cfg.LogLevel)
	if *dev {
		if err := devToken(cfg); err != nil {
			return err
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	core, err := openCore(ctx, cfg)
	if err != nil {
		return err
	}
	defer core.close()
	core.logInventory(ctx)
	slog.Info("iot-hsm running", "version", version, "state_dir", cfg.StateDir)
	<-ctx.Done()
	slog.Info("iot-hsm stopping")
	return nil
}

func setupLogging(level string) {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})))
}

// devToken makes (once) a SoftHSM2 token under the state directory and configures it.
func devToken(cfg *config.Config) error {
	dir := filepath.Join(cfg.StateDir, "softhsm")
	tok, err := softhsm.Open(dir, "iot-hsm-dev")
	if errors.Is(err, os.ErrNotExist) {
		tok, err = softhsm.Create(dir, "iot-hsm-dev")
		if err == nil {
			slog.Info("created a SoftHSM2 development token", "dir", dir, "serial", tok.Serial)
		}
	}
	if err != nil {
		return fmt.Errorf("dev token: %w", err)
	}
	// SoftHSM2 reads this in every C_Initialize, so it stays set for the process.
	os.Setenv("SOFTHSM2_CONF", tok.Conf)
	cfg.PKCS11 = append(cfg.PKCS11, config.PKCS11{Module: tok.Module, Token: "pkcs11:serial=" + tok.Serial, PIN: tok.PIN})
	return nil
}

// core is what the daemon holds: the state store and the HSMs.
type core struct {
	store    *store.Store
	registry *device.Registry
	slots    *device.Slots
}

func openCore(ctx context.Context, cfg *config.Config) (*core, error) {
	st, err := store.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	var providers []hsm.Provider
	for _, pc := range cfg.PKCS11 {
		mod, err := openPKCS11(ctx, pc)
		if err != nil {
			// One bad module must not take the appliance down: its slots show as
			// disconnected and the error is in the log.
			slog.Error("PKCS#11 module not available", "module", pc.Module, "err", err)
			continue
		}
		providers = append(providers, mod)
	}
	reg := device.NewRegistry(providers...)
	if err := reg.Rescan(ctx); err != nil {
		slog.Warn("HSM scan incomplete", "err", err)
	}
	return &core{store: st, registry: reg, slots: &device.Slots{Store: st, Registry: reg}}, nil
}

// openPKCS11 loads a module and logs in to the tokens the configuration selects, once
// each: a rejected PIN is logged and not tried again.
func openPKCS11(ctx context.Context, pc config.PKCS11) (*pkcs11.Module, error) {
	var sel *pkcs11.URI
	if pc.Token != "" {
		var err error
		if sel, err = pkcs11.ParseURI(pc.Token); err != nil {
			return nil, err
		}
	}
	pin, err := pc.ReadPIN()
	if err != nil {
		return nil, err
	}
	mod, err := pkcs11.Open(pc.Module)
	if err != nil {
		return nil, err
	}
	toks, err := mod.Tokens(ctx)
	if err != nil {
		mod.Close()
		return nil, err
	}
	for _, ht := range toks {
		t := ht.(*pkcs11.Token)
		info := t.Info()
		if sel != nil && !sel.Matches(t.Label(), info.Serial, "", "") {
			continue
		}
		if pin == "" {
			slog.Warn("no PIN configured; the token's keys cannot be used", "hsm", info.ID)
			continue
		}
		if err := t.Login(ctx, pin); err != nil {
			slog.Error("PIN refused; not retried", "hsm", info.ID, "err", err)
		}
	}
	return mod, nil
}

func (c *core) logInventory(ctx context.Context) {
	for _, t := range c.registry.Tokens() {
		info := t.Info()
		slog.Info("HSM", "id", info.ID, "kind", info.Kind, "model", info.Model, "present", info.Present, "pin_set", info.PIN.Set)
	}
	recs, err := c.store.Slots()
	if err != nil {
		slog.Error("reading slot state", "err", err)
	}
	for _, r := range recs {
		slog.Info("slot", "slot_id", r.ID, "state", r.State, "key_type", r.KeyType, "ca_id", r.CAID)
	}
}

func (c *core) close() {
	c.registry.Close()
	c.store.Close()
}
