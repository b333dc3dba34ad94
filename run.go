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
	"time"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/store"
)

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	cfgPath := fs.String("config", "", "configuration file (TOML)")
	dev := fs.Bool("dev", false, "development mode: a SoftHSM2 token in the state directory and the embedded broker")
	stateDir := fs.String("state-dir", "", "state directory (overrides the configuration)")
	devListen := fs.String("dev-listen", "", "address of the embedded broker in --dev mode (default "+config.DefaultEmbeddedListen+")")
	fs.Parse(args)

	cfg := config.Default()
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
	if *devListen != "" {
		cfg.MQTT.Broker, cfg.MQTT.EmbeddedListen = "", *devListen
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

	d, client, stopNet, err := startNetwork(ctx, cfg, core)
	if err != nil {
		return err
	}
	slog.Info("iot-hsm running", "version", version, "device", d.Topics().Device, "state_dir", cfg.StateDir)
	<-ctx.Done()
	slog.Info("iot-hsm stopping")
	d.Stop()
	// A clean disconnect sends no Last Will, so the offline status goes out first.
	pubCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = client.Publish(pubCtx, d.Topics().Status(), device.OfflineStatus(d.Topics().Device), true)
	cancel()
	stopNet()
	return nil
}

// startNetwork starts the embedded broker when none is configured, the broker
// session, and the device core on it.
func startNetwork(ctx context.Context, cfg *config.Config, c *core) (*device.Device, *mqtt.Client, func(), error) {
	var broker *mqtt.Broker
	mc := mqtt.Config{
		Broker: cfg.MQTT.Broker, ClientID: cfg.MQTT.ClientID, Username: cfg.MQTT.Username,
		CAFile: cfg.MQTT.CAFile, CertFile: cfg.MQTT.CertFile, KeyFile: cfg.MQTT.KeyFile,
		AllowPlaintext: cfg.MQTT.AllowPlaintext,
	}
	pw, err := cfg.MQTT.ReadPassword()
	if err != nil {
		return nil, nil, nil, err
	}
	mc.Password = pw
	if cfg.MQTT.Broker == "" {
		broker, err = mqtt.StartBroker(cfg.MQTT.EmbeddedListen)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("embedded broker: %w", err)
		}
		slog.Warn("no broker configured: running the embedded development broker (no authentication)", "listen", broker.Addr())
		mc.Broker, mc.AllowPlaintext = broker.URL(), true
	}
	dev := device.New(device.Options{
		DeviceID: cfg.DeviceID, TopicRoot: cfg.TopicRoot, Version: version,
		QueueSize: cfg.QueueSize, AllowDigest: cfg.AllowDigest,
	}, c.slots)
	if mc.ClientID == "" {
		mc.ClientID = "iot-hsm-" + dev.Topics().Device
	}
	mc.Will = &mqtt.Message{Topic: dev.Topics().Status(), Payload: device.OfflineStatus(dev.Topics().Device), Retained: true}
	client, err := mqtt.New(mc)
	if err != nil {
		if broker != nil {
			broker.Close()
		}
		return nil, nil, nil, err
	}
	client.OnConnect(dev.Connected)
	if err := dev.Start(ctx, transport{client}); err != nil {
		return nil, nil, nil, err
	}
	startCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := client.Start(startCtx); err != nil {
		// Not fatal: the session keeps retrying, and signing waits for it.
		slog.Warn("broker not reachable yet; retrying in the background", "broker", mc.Broker, "err", err)
	}
	stop := func() {
		client.Close(time.Second)
		if broker != nil {
			broker.Close()
		}
	}
	return dev, client, stop, nil
}

// transport adapts the MQTT client to what the device core needs.
type transport struct{ c *mqtt.Client }

func (t transport) Publish(ctx context.Context, topic string, payload []byte, retained bool) error {
	return t.c.Publish(ctx, topic, payload, retained)
}
func (t transport) Subscribe(filter string, h func(string, []byte)) error {
	return t.c.Subscribe(filter, h)
}
func (t transport) Unsubscribe(filter string) error { return t.c.Unsubscribe(filter) }
func (t transport) Connected() bool                 { return t.c.Connected() }

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
