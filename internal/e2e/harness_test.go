// Package e2e drives the appliance core end to end through a real broker (mosquitto,
// and the embedded broker): every request is an MQTT message, every artefact is
// checked with openssl.
package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	wiring "github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// broker is one of the two brokers every end-to-end test runs against.
type broker struct {
	name string
	url  string
}

func brokers(t *testing.T) []broker {
	t.Helper()
	mos := brokertest.StartMosquitto(t)
	emb, err := mqtt.StartBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	return []broker{{"mosquitto", mos.URL}, {"embedded", emb.URL()}}
}

// appliance is an appliance built by the one wiring `iot-hsm run` uses
// (internal/appliance), from a configuration the test writes.
type appliance struct {
	id       string
	app      *wiring.Appliance
	dev      *device.Device
	tok      *softhsm.Token // the SoftHSM2 token it was given, if any
	hsmID    string
	stateDir string
}

// options are the parts of the configuration the tests vary.
type options struct {
	queueSize   int
	allowDigest bool
	controllers []byte // [trust] controllers, PEM: requests must be signed
	stateDir    string // "" is a fresh temporary directory
	secretsKey  string // [secrets] key_file
	mqtt        config.MQTT
	pkcs11      []config.PKCS11
	yubikey     *config.YubiKey // nil: the YubiKey backend is off
	cloudkms    []config.CloudKMS
	fleet       config.Fleet
	trace       func(step string, d time.Duration) // wiring.Hooks.Trace
}

// config is the configuration an operator would write for o.
func (o options) config(t *testing.T, brokerURL, deviceID string) *config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.DeviceID, cfg.StateDir = deviceID, o.stateDir
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	cfg.MQTT = o.mqtt
	if cfg.MQTT.Broker == "" {
		cfg.MQTT.Broker, cfg.MQTT.AllowPlaintext = brokerURL, true
	}
	cfg.MQTT.ClientID = "iot-hsm-" + deviceID
	if o.queueSize > 0 {
		cfg.QueueSize = o.queueSize
	}
	cfg.AllowDigest = o.allowDigest
	cfg.Service.BrokerWait = 10 * time.Second
	cfg.Secrets.KeyFile = o.secretsKey
	if cfg.Secrets.KeyFile == "" {
		cfg.Secrets.KeyFile = filepath.Join(t.TempDir(), "secrets.key")
	}
	cfg.PKCS11, cfg.CloudKMS = o.pkcs11, o.cloudkms
	if o.fleet.Enabled {
		cfg.Fleet = o.fleet
	}
	cfg.YubiKey.Disabled = o.yubikey == nil
	if o.yubikey != nil {
		cfg.YubiKey = *o.yubikey
	}
	if o.controllers != nil {
		cfg.Trust.Controllers = filepath.Join(t.TempDir(), "controllers.pem")
		if err := os.WriteFile(cfg.Trust.Controllers, o.controllers, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

// startAppliance starts an appliance over one SoftHSM2 token, configured by a
// [[pkcs11]] block as an operator would.
func startAppliance(t *testing.T, brokerURL, deviceID string, tok *softhsm.Token, o options) *appliance {
	t.Helper()
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	o.pkcs11 = append(o.pkcs11, config.PKCS11{Module: tok.Module, Token: "pkcs11:serial=" + tok.Serial, PIN: tok.PIN})
	a := start(t, brokerURL, deviceID, o)
	a.tok, a.hsmID = tok, "pkcs11-"+tok.Serial
	return a
}

// start builds the appliance from o's configuration and connects it, as `iot-hsm
// run` does, and waits for its broker session.
func start(t *testing.T, brokerURL, deviceID string, o options) *appliance {
	t.Helper()
	ctx := context.Background()
	cfg := o.config(t, brokerURL, deviceID)
	app, err := wiring.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := app.Start(ctx, wiring.Hooks{Version: "test", Trace: o.trace}); err != nil {
		app.Close()
		t.Fatal(err)
	}
	a := &appliance{id: deviceID, app: app, dev: app.Device, stateDir: cfg.StateDir}
	t.Cleanup(a.stop)
	deadline := time.Now().Add(10 * time.Second)
	for !app.Client.Connected() {
		if time.Now().After(deadline) {
			t.Fatalf("appliance %s: no broker session within 10s", deviceID)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if toks := app.Registry.Tokens(); len(toks) > 0 {
		a.hsmID = toks[0].Info().ID
	}
	return a
}

func (a *appliance) stop() {
	if a.dev == nil {
		return
	}
	a.dev.Stop()
	if a.app.CAClient != nil {
		a.app.CAClient.Close(100 * time.Millisecond)
	}
	a.app.Client.Close(100 * time.Millisecond)
	a.app.Close()
	a.dev = nil
}

// operator is a PKI or an operator's script: a plain MQTT client.
type operator struct {
	*mqtttest.Client
	t *testing.T
}

func newOperator(t *testing.T, brokerURL string) *operator {
	t.Helper()
	return &operator{Client: mqtttest.Start(t, brokerURL, mqtttest.Options{Name: "pki"}), t: t}
}

// envelope builds a request with a fresh id unless id is given.
func (o *operator) envelope(id string, args any) (string, []byte) { return o.Request(id, args) }

func (o *operator) publish(topic string, payload []byte) {
	o.t.Helper()
	if err := o.Send(topic, payload); err != nil {
		o.t.Fatal(err)
	}
}

// wait returns the n-th reply for id, failing the test after timeout.
func (o *operator) wait(id string, n int, timeout time.Duration) protocol.Reply {
	o.t.Helper()
	r, ok := o.Reply(id, n, timeout)
	if !ok {
		o.t.Fatalf("no reply %d for request %s within %v", n, id, timeout)
	}
	return r
}

func (o *operator) count(id string) int { return len(o.Raw(id)) }

// call sends a command to a device and waits for its reply.
func (o *operator) call(dev *appliance, cmd string, args any) protocol.Reply {
	o.t.Helper()
	id, payload := o.envelope("", args)
	o.publish(dev.dev.Topics().Cmd(cmd), payload)
	return o.wait(id, 1, 2*time.Minute)
}

// ok fails the test unless the reply succeeded, and decodes its result.
func ok[T any](t *testing.T, r protocol.Reply) T {
	t.Helper()
	return mqtttest.Result[T](t, r)
}

func failed(t *testing.T, r protocol.Reply, code string) {
	t.Helper()
	if r.OK || r.Error == nil || r.Error.Code != code {
		t.Fatalf("%s: got ok=%v error=%+v, want error %s", r.Cmd, r.OK, r.Error, code)
	}
}
