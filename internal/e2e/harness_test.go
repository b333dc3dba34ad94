// Package e2e drives the appliance core end to end through a real broker (mosquitto,
// and the embedded broker): every request is an MQTT message, every artefact is
// checked with openssl.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/auth"
	"sync"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
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

// appliance is the daemon's core, wired as `iot-hsm run` wires it.
type appliance struct {
	id     string
	tok    *softhsm.Token
	mod    *pkcs11.Module
	st     *store.Store
	dev    *device.Device
	client *mqtt.Client
	reg    *device.Registry
	hsmID  string
}

type options struct {
	queueSize   int
	allowDigest bool
	verifier    *auth.Verifier
	audit       *audit.Log
}

func startAppliance(t *testing.T, brokerURL, deviceID string, tok *softhsm.Token, o options) *appliance {
	t.Helper()
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	mod, err := pkcs11.Open(tok.Module)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ptok, err := mod.Token(ctx, tok.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if err := ptok.Login(ctx, tok.PIN); err != nil {
		t.Fatal(err)
	}
	a := startWith(t, brokerURL, deviceID, mod, o)
	a.tok, a.mod, a.hsmID = tok, mod, ptok.Info().ID
	return a
}

// startWith wires the daemon's core over the given HSM backend, as `iot-hsm run`
// does: registry, state store, device core, broker session.
func startWith(t *testing.T, brokerURL, deviceID string, p hsm.Provider, o options) *appliance {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg := device.NewRegistry(p)
	if err := reg.Rescan(ctx); err != nil {
		t.Fatal(err)
	}
	dev := device.New(device.Options{DeviceID: deviceID, Version: "test", QueueSize: o.queueSize, AllowDigest: o.allowDigest,
		Verifier: o.verifier, Audit: o.audit},
		&device.Slots{Store: st, Registry: reg})
	client, err := mqtt.New(mqtt.Config{
		Broker: brokerURL, ClientID: "iot-hsm-" + deviceID, AllowPlaintext: true,
		Will: &mqtt.Message{Topic: dev.Topics().Status(), Payload: device.OfflineStatus(deviceID), Retained: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	client.OnConnect(dev.Connected)
	if err := dev.Start(ctx, client); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := client.Start(sctx); err != nil {
		t.Fatal(err)
	}
	a := &appliance{id: deviceID, st: st, dev: dev, client: client, reg: reg}
	t.Cleanup(a.stop)
	return a
}

func (a *appliance) stop() {
	if a.dev == nil {
		return
	}
	a.dev.Stop()
	a.client.Close(100 * time.Millisecond)
	a.st.Close()
	a.reg.Close()
	a.dev = nil
}

// operator is a PKI or an operator's script: a plain MQTT client.
type operator struct {
	t       *testing.T
	c       *mqtt.Client
	replyTo string
	mu      sync.Mutex
	replies map[string][]protocol.Reply
	raw     map[string][][]byte
	arrived chan struct{}
}

func newOperator(t *testing.T, brokerURL string) *operator {
	t.Helper()
	id := randomID()
	c, err := mqtt.New(mqtt.Config{Broker: brokerURL, ClientID: "pki-" + id, AllowPlaintext: true, CleanSession: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	o := &operator{t: t, c: c, replyTo: "pki/" + id + "/replies", replies: map[string][]protocol.Reply{},
		raw: map[string][][]byte{}, arrived: make(chan struct{}, 1)}
	if err := c.Subscribe(o.replyTo, o.onReply); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(100 * time.Millisecond) })
	return o
}

func (o *operator) onReply(_ string, payload []byte) {
	var r protocol.Reply
	if err := json.Unmarshal(payload, &r); err != nil {
		o.t.Errorf("reply is not JSON: %v: %s", err, payload)
		return
	}
	o.mu.Lock()
	o.replies[r.ID] = append(o.replies[r.ID], r)
	o.raw[r.ID] = append(o.raw[r.ID], append([]byte(nil), payload...))
	o.mu.Unlock()
	select {
	case o.arrived <- struct{}{}:
	default:
	}
}

func randomID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// envelope builds a request with a fresh id unless id is given.
func (o *operator) envelope(id string, args any) (string, []byte) {
	if id == "" {
		id = randomID()
	}
	raw, err := json.Marshal(args)
	if err != nil {
		o.t.Fatal(err)
	}
	exp := time.Now().Add(time.Minute).UTC()
	b, _ := json.Marshal(protocol.Request{ID: id, ReplyTo: o.replyTo, ExpiresAt: &exp, Args: raw})
	return id, b
}

func (o *operator) publish(topic string, payload []byte) {
	o.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := o.c.Publish(ctx, topic, payload, false); err != nil {
		o.t.Fatal(err)
	}
}

// wait returns the n-th reply for id, failing the test after timeout.
func (o *operator) wait(id string, n int, timeout time.Duration) protocol.Reply {
	o.t.Helper()
	deadline := time.After(timeout)
	for {
		o.mu.Lock()
		rs := o.replies[id]
		o.mu.Unlock()
		if len(rs) >= n {
			return rs[n-1]
		}
		select {
		case <-o.arrived:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			o.t.Fatalf("no reply %d for request %s within %v", n, id, timeout)
		}
	}
}

func (o *operator) count(id string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.replies[id])
}

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
	var v T
	if !r.OK {
		t.Fatalf("%s failed: %+v", r.Cmd, r.Error)
	}
	if err := json.Unmarshal(r.Result, &v); err != nil {
		t.Fatalf("%s result: %v", r.Cmd, err)
	}
	return v
}

func failed(t *testing.T, r protocol.Reply, code string) {
	t.Helper()
	if r.OK || r.Error == nil || r.Error.Code != code {
		t.Fatalf("%s: got ok=%v error=%+v, want error %s", r.Cmd, r.OK, r.Error, code)
	}
}
