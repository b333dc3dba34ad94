package appliance

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/auth"
	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// Hooks are what the daemon around the appliance is told, and what it runs for the
// device's lifecycle commands; all optional.
type Hooks struct {
	Version  string
	OnChange func(protocol.Status)
	OnSign   func(slotID string, e *protocol.Error)
	// OnConnectionLost is told when the broker session drops.
	OnConnectionLost func()
	Reload           func(ctx context.Context) (any, error)
	Restart          func()
	// Trace is told the wall time of each step of a request (device.Options.Trace);
	// the benchmarks set it, the daemon does not.
	Trace func(step string, d time.Duration)
	// LEDs names what each LED shows now, for the dashboard.
	LEDs func() []string
}

// Start starts the embedded broker when the configuration has none (development
// mode only: config.CheckBroker refuses it otherwise), the device core, and the
// broker session, trying the first connection for service.broker_wait. A broker
// that is not reachable is not an error: the session keeps retrying.
func (a *Appliance) Start(ctx context.Context, h Hooks) error {
	cfg := a.cfg
	mc, broker, err := brokerSession(cfg.MQTT)
	if err != nil {
		return err
	}
	// What is started is undone in reverse order when a later step fails.
	undo := []func(){func() { closeBroker(broker) }}
	fail := func(err error) error {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return err
	}
	verifier, trustSum, err := trustVerifier(cfg.Trust)
	if err != nil {
		return fail(err)
	}
	deviceID := cfg.DeviceID
	if deviceID == "" {
		deviceID = device.DefaultDeviceID()
	}
	if mc.ClientID == "" {
		mc.ClientID = "iot-hsm-" + deviceID
	}
	caClient, err := caSession(cfg.Fleet, mc)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func() { closeClient(caClient) })
	srv, err := a.newWeb(h)
	if err != nil {
		return fail(err)
	}
	opts := a.deviceOptions(h, deviceID, verifier, caClient)
	webOptions(&opts, srv)
	dev := device.New(opts, a.Slots)
	mc.Will = &mqtt.Message{Topic: dev.Topics().Status(), Payload: device.OfflineStatus(dev.Topics().Device), Retained: true}
	client, err := mqtt.New(mc)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func() { client.Close(0) })
	a.connectHooks(h, dev, client, caClient)
	if err := dev.Start(ctx, client); err != nil {
		dev.Stop()
		return fail(err)
	}
	if srv != nil {
		srv.Attach(dev)
		if err := srv.Start(); err != nil {
			dev.Stop()
			return fail(err)
		}
	}
	a.Device, a.Client, a.CAClient, a.broker, a.trustSum, a.web = dev, client, caClient, broker, trustSum, srv
	startCtx, cancel := context.WithTimeout(ctx, cfg.Service.BrokerWait)
	defer cancel()
	if err := client.Start(startCtx); err != nil {
		slog.Warn("broker not reachable yet; retrying in the background", "broker", mc.Broker, "err", err)
	}
	if caClient != nil {
		if err := caClient.Start(startCtx); err != nil {
			slog.Warn("broker not reachable yet for the CA topics; retrying in the background", "broker", mc.Broker, "err", err)
		}
	}
	return nil
}

// deviceOptions are the device core's options from the configuration and the hooks.
func (a *Appliance) deviceOptions(h Hooks, deviceID string, verifier *auth.Verifier, caClient *mqtt.Client) device.Options {
	cfg := a.cfg
	var caTr device.Transport // nil unless a fleet member: the device's session
	if caClient != nil {
		caTr = caClient
	}
	return device.Options{
		DeviceID: deviceID, TopicRoot: cfg.TopicRoot, Version: h.Version,
		QueueSize: cfg.QueueSize, AllowDigest: cfg.AllowDigest,
		Verifier: verifier, Audit: a.Audit, Secrets: a.Secrets,
		OnChange: h.OnChange, OnSign: h.OnSign, Reload: h.Reload, Restart: h.Restart, OTA: a.otaHooks(), Trace: h.Trace,
		Problems: a.pkcs11.Problems,
		Fleet:    cfg.Fleet.Enabled, CATransport: caTr, FleetWindow: cfg.Fleet.ClaimWindow, EpochFile: filepath.Join(cfg.StateDir, "fleet-epochs.json"),
	}
}

// connectHooks tells the device of the sessions' connections and losses.
func (a *Appliance) connectHooks(h Hooks, dev *device.Device, client, caClient *mqtt.Client) {
	client.OnConnect(dev.Connected)
	client.OnTakeover(func(t mqtt.Takeover) { dev.BrokerTakeover(t.Losses, t.Window, t.Backoff) })
	if h.OnConnectionLost != nil {
		client.OnConnectionLost(func(error) { h.OnConnectionLost() })
	}
	if caClient != nil {
		caClient.OnConnect(dev.FleetConnected)
	}
}

// caSession is, for a fleet member, the session of the CA topics: clean, so that
// while the appliance is gone the broker keeps none of the CA's requests for it (the
// others get them), and a restarted appliance works off no backlog. Nil without
// [fleet]: the CA topics then share the device's persistent session.
func caSession(f config.Fleet, mc mqtt.Config) (*mqtt.Client, error) {
	if !f.Enabled {
		return nil, nil
	}
	ca := mc
	ca.ClientID = mc.ClientID + "-ca"
	ca.CleanSession = true
	ca.Will = nil
	return mqtt.New(ca)
}

func closeClient(c *mqtt.Client) {
	if c != nil {
		c.Close(time.Second)
	}
}

// Stop takes no new requests, lets the running ones finish or fail within
// service.stop_timeout, publishes the offline status and disconnects. clean is false
// when a worker is still inside a token call: Close must then be left to the exit.
func (a *Appliance) Stop() (clean bool) {
	if a.web != nil {
		a.web.Close() // no new commands from pages while the device drains
	}
	// No new requests from the CA topics: the fleet's other members take them.
	closeClient(a.CAClient)
	clean = a.Device.Shutdown(a.cfg.Service.StopTimeout)
	// A clean disconnect sends no Last Will, so the offline status goes out first.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if err := a.Client.Publish(ctx, a.Device.Topics().Status(), device.OfflineStatus(a.Device.Topics().Device), true); err != nil {
		slog.Warn("offline status not published", "err", err)
	}
	cancel()
	a.Client.Close(time.Second)
	closeBroker(a.broker)
	return clean
}

func closeBroker(b *mqtt.Broker) {
	if b != nil {
		b.Close()
	}
}

// brokerSession is the session's configuration, and the embedded broker it talks to
// when none is configured (development mode only).
func brokerSession(m config.MQTT) (mqtt.Config, *mqtt.Broker, error) {
	mc := mqtt.Config{
		Broker: m.Broker, ClientID: m.ClientID, Username: m.Username,
		CAFile: m.CAFile, CertFile: m.CertFile, KeyFile: m.KeyFile,
		AllowPlaintext: m.AllowPlaintext,
	}
	pw, err := m.ReadPassword()
	if err != nil {
		return mc, nil, err
	}
	mc.Password = pw
	if m.Broker != "" {
		if m.AllowPlaintext && !strings.HasPrefix(m.Broker, "ssl:") && !strings.HasPrefix(m.Broker, "tls:") && !strings.HasPrefix(m.Broker, "mqtts:") {
			// The URL is not logged: mqtt.New refuses one with credentials, later.
			slog.Warn("allow_plaintext: requests (PINs of hsm.set_pin among them) and replies cross the network " +
				"readable and forgeable; use TLS beyond loopback")
		}
		return mc, nil, nil
	}
	broker, err := mqtt.StartBroker(m.EmbeddedListen)
	if err != nil {
		return mc, nil, fmt.Errorf("embedded broker: %w", err)
	}
	slog.Warn("development mode: running the embedded broker (loopback, no authentication); "+
		"configure [mqtt] broker for anything else", "listen", broker.Addr())
	mc.Broker, mc.AllowPlaintext = broker.URL(), true
	return mc, broker, nil
}

// The broker session is the device core's transport as it is.
var _ device.Transport = (*mqtt.Client)(nil)
