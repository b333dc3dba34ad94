package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/iot-hsm/iot-hsm/audit"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// Goroutines started under these pprof labels (and every goroutine they start) carry
// them, so CPU samples and goroutine counts can be told apart between the appliance
// and the benchmark's own client in one process.
const (
	labelKey       = "part"
	labelAppliance = "appliance"
	labelClient    = "client"
)

func withLabel(part string, f func()) {
	pprof.Do(context.Background(), pprof.Labels(labelKey, part), func(context.Context) { f() })
}

// appliance is the daemon's core wired as `iot-hsm run` and internal/e2e wire it:
// module, registry, store, audit trail, device, MQTT client (publishes timed).
type appliance struct {
	dev    *device.Device
	client *mqtt.Client
	st     *store.Store
	hsmID  string
}

func startAppliance(brokerURL, deviceID, stateDir string, mod *pkcs11.Module, tok *pkcs11.Token) (*appliance, error) {
	var a *appliance
	var err error
	withLabel(labelAppliance, func() { a, err = wireAppliance(brokerURL, deviceID, stateDir, mod, tok) })
	return a, err
}

func wireAppliance(brokerURL, deviceID, stateDir string, mod *pkcs11.Module, tok *pkcs11.Token) (*appliance, error) {
	ctx := context.Background()
	st, err := store.Open(stateDir)
	if err != nil {
		return nil, err
	}
	reg := slots.NewRegistry(timedProvider{mod})
	if err := reg.Rescan(ctx); err != nil {
		st.Close()
		return nil, err
	}
	// The daemon always keeps an audit trail: its syncs are part of the cost.
	al, err := audit.Open(filepath.Join(stateDir, "audit.log"))
	if err != nil {
		st.Close()
		return nil, err
	}
	// The queue must hold every request in flight, or the device answers busy.
	dev := device.New(device.Options{DeviceID: deviceID, Version: "bench", QueueSize: 128, AllowDigest: true, Audit: al},
		&slots.Slots{Store: st, Registry: reg})
	client, err := mqtt.New(mqtt.Config{
		Broker: brokerURL, ClientID: "iot-hsm-" + deviceID, AllowPlaintext: true,
		Will: &mqtt.Message{Topic: dev.Topics().Status(), Payload: device.OfflineStatus(deviceID), Retained: true},
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	client.OnConnect(dev.Connected)
	if err := dev.Start(ctx, transport{client}); err != nil {
		st.Close()
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := client.Start(sctx); err != nil {
		dev.Stop()
		client.Close(0)
		st.Close()
		return nil, err
	}
	return &appliance{dev: dev, client: client, st: st, hsmID: tok.Info().ID}, nil
}

func (a *appliance) stop() {
	a.dev.Stop()
	a.client.Close(100 * time.Millisecond)
	a.st.Close()
}

// transport wraps the MQTT client to time the reply publishes.
type transport struct{ c *mqtt.Client }

func (t transport) Publish(ctx context.Context, topic string, payload []byte, retained bool) error {
	t0 := time.Now()
	err := t.c.Publish(ctx, topic, payload, retained)
	shims.publish.add(time.Since(t0))
	return err
}

// PublishAsync times each reply from the moment it is put in flight to its PUBACK;
// the replies of a batch overlap.
func (t transport) PublishAsync(topic string, payload []byte, retained bool) func(context.Context) error {
	t0 := time.Now()
	wait := t.c.PublishAsync(topic, payload, retained)
	return func(ctx context.Context) error {
		err := wait(ctx)
		shims.publish.add(time.Since(t0))
		return err
	}
}

func (t transport) Subscribe(filter string, h func(string, []byte)) error {
	return t.c.Subscribe(filter, h)
}
func (t transport) Unsubscribe(filter string) error { return t.c.Unsubscribe(filter) }
func (t transport) Connected() bool                 { return t.c.Connected() }

// operator is the PKI: a plain MQTT client that sends requests and matches replies by id.
type operator struct {
	c       *mqtt.Client
	replyTo string
	prefix  string
	seq     atomic.Uint64

	mu      sync.Mutex
	pending map[string]chan protocol.Reply
}

func newOperator(brokerURL string) (*operator, error) {
	var o *operator
	var err error
	withLabel(labelClient, func() {
		id := randomHex(6)
		var c *mqtt.Client
		c, err = mqtt.New(mqtt.Config{Broker: brokerURL, ClientID: "bench-pki-" + id, AllowPlaintext: true, CleanSession: true})
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err = c.Start(ctx); err != nil {
			c.Close(0)
			return
		}
		o = &operator{c: c, replyTo: "bench/" + id + "/replies", prefix: "b" + id + "-", pending: map[string]chan protocol.Reply{}}
		if err = c.Subscribe(o.replyTo, o.onReply); err != nil {
			c.Close(0)
		}
	})
	return o, err
}

func (o *operator) close() { o.c.Close(100 * time.Millisecond) }

// onReply runs on the client's dispatch goroutine; it only hands the reply over.
func (o *operator) onReply(_ string, payload []byte) {
	var r protocol.Reply
	if json.Unmarshal(payload, &r) != nil {
		return
	}
	o.mu.Lock()
	ch := o.pending[r.ID]
	delete(o.pending, r.ID)
	o.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// call publishes one request with the given (already encoded) args and waits for its
// reply. Ids are a per-operator prefix and a counter: unique across every run, so the
// appliance's reply cache never answers a benchmark request from an earlier one.
func (o *operator) call(topic string, args json.RawMessage, timeout time.Duration) (protocol.Reply, error) {
	id := fmt.Sprintf("%s%d", o.prefix, o.seq.Add(1))
	exp := time.Now().Add(time.Minute).UTC()
	payload, err := json.Marshal(protocol.Request{ID: id, ReplyTo: o.replyTo, ExpiresAt: &exp, Args: args})
	if err != nil {
		return protocol.Reply{}, err
	}
	ch := make(chan protocol.Reply, 1)
	o.mu.Lock()
	o.pending[id] = ch
	o.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := o.c.Publish(ctx, topic, payload, false); err != nil {
		o.forget(id)
		return protocol.Reply{}, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		o.forget(id)
		return protocol.Reply{}, fmt.Errorf("no reply to %s within %s", id, timeout)
	}
}

func (o *operator) forget(id string) {
	o.mu.Lock()
	delete(o.pending, id)
	o.mu.Unlock()
}

// command sends args to a device command topic and decodes a successful result.
func command[T any](o *operator, topics protocol.Topics, cmd string, args any) (T, error) {
	var out T
	raw, err := json.Marshal(args)
	if err != nil {
		return out, err
	}
	r, err := o.call(topics.Cmd(cmd), raw, 3*time.Minute)
	if err != nil {
		return out, err
	}
	if !r.OK {
		return out, fmt.Errorf("%s: %v", cmd, r.Error)
	}
	return out, json.Unmarshal(r.Result, &out)
}

// provisionedCA is one slot turned into a root CA over MQTT, as the seed's wizard does.
type provisionedCA struct {
	SlotID  string
	CAID    string
	CertPEM string
}

// provisionExisting takes over a key already on the token (mode existing) and
// self-signs it, so the slot signs on its CA topic.
func provisionExisting(o *operator, topics protocol.Topics, hsmID, slot, cn string) (provisionedCA, error) {
	return provision(o, topics, protocol.ProvisionArgs{HSM: hsmID, Slot: slot, Mode: "existing"}, cn)
}

func provision(o *operator, topics protocol.Topics, args protocol.ProvisionArgs, cn string) (provisionedCA, error) {
	res, err := command[protocol.ProvisionResult](o, topics, protocol.CmdSlotProvision, args)
	if err != nil {
		return provisionedCA{}, err
	}
	prov, err := ca.MakeProvisioningCert(ca.ProvisioningOptions{
		Subject:  pkix.Name{CommonName: cn, Organization: []string{"iot-hsm bench"}},
		Validity: 10 * 365 * 24 * time.Hour, MaxPathLen: 1, PermittedDNSDomains: []string{"example.com"},
	})
	if err != nil {
		return provisionedCA{}, err
	}
	cert, err := command[protocol.CertificateResult](o, topics, protocol.CmdSlotSelfSign,
		protocol.ProvisioningCertArgs{SlotID: res.SlotID, ProvisioningCert: string(prov)})
	if err != nil {
		return provisionedCA{}, err
	}
	return provisionedCA{SlotID: res.SlotID, CAID: res.CAID, CertPEM: cert.Certificate}, nil
}

// leafCSR is what a TLS server sends its PKI.
func leafCSR(dns string) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: dns}, DNSNames: []string{dns},
	}, key)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// errNoReplies marks a load run in which nothing was answered.
var errNoReplies = errors.New("no request was answered")
