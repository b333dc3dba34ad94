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
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// Goroutines started under these pprof labels (and every goroutine they start) carry
// them, so CPU samples and goroutine counts can be told apart between the appliance
// and the benchmark's own client in one process. The device adds its step label
// (device.StepLabel) on top while a request is in one of its steps.
const (
	labelKey       = "part"
	labelAppliance = "appliance"
	labelClient    = "client"
)

func withLabel(part string, f func(ctx context.Context)) {
	pprof.Do(context.Background(), pprof.Labels(labelKey, part), f)
}

// startAppliance builds the appliance as `iot-hsm run` does (internal/appliance),
// from the configuration an operator would write for one SoftHSM2 token, with the
// device's step trace going to steps; tune, when given, changes that configuration.
func startAppliance(brokerURL, deviceID, work string, tok *softhsm.Token, tune ...func(*config.Config)) (*appliance.Appliance, error) {
	cfg := config.Default()
	cfg.DeviceID, cfg.StateDir = deviceID, filepath.Join(work, "state")
	cfg.MQTT.Broker, cfg.MQTT.AllowPlaintext = brokerURL, true
	cfg.QueueSize = 128 // every request in flight fits, or the device answers busy
	cfg.AllowDigest = true
	cfg.Service.BrokerWait = 10 * time.Second
	cfg.Secrets.KeyFile = filepath.Join(work, "secrets.key")
	cfg.YubiKey.Disabled = true
	if tok != nil {
		cfg.PKCS11 = []config.PKCS11{{Module: tok.Module, Token: "pkcs11:serial=" + tok.Serial, PIN: tok.PIN}}
	}
	for _, f := range tune {
		f(cfg)
	}
	var a *appliance.Appliance
	var err error
	withLabel(labelAppliance, func(ctx context.Context) {
		if a, err = appliance.Open(ctx, cfg); err != nil {
			return
		}
		if err = a.Start(ctx, appliance.Hooks{Version: "bench", Trace: steps.add}); err != nil {
			a.Close()
			return
		}
		for deadline := time.Now().Add(10 * time.Second); !a.Client.Connected(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				a.Stop()
				a.Close()
				err = errors.New("the appliance has no broker session after 10s")
				return
			}
		}
	})
	return a, err
}

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
	withLabel(labelClient, func(ctx context.Context) {
		id := randomHex(6)
		var c *mqtt.Client
		if c, err = mqtt.New(mqtt.Config{Broker: brokerURL, ClientID: "bench-pki-" + id, AllowPlaintext: true, CleanSession: true}); err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
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
	defer func() {
		o.mu.Lock()
		delete(o.pending, id)
		o.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := o.c.Publish(ctx, topic, payload, false); err != nil {
		return protocol.Reply{}, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return protocol.Reply{}, fmt.Errorf("no reply to %s within %s", id, timeout)
	}
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

// provisionedCA is one slot turned into a root CA over MQTT, as the original IoT-HSM's wizard does.
type provisionedCA struct {
	CAID    string
	CertPEM string
}

// provision generates a key in a slot and self-signs it, so the slot signs on its CA
// topic.
func provision(o *operator, topics protocol.Topics, hsmID, slot, keyType, cn string) (provisionedCA, error) {
	res, err := command[protocol.ProvisionResult](o, topics, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: hsmID, Slot: slot, Mode: "generate", KeyType: keyType})
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
	return provisionedCA{CAID: res.CAID, CertPEM: cert.Certificate}, nil
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
