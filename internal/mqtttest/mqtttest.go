// Package mqtttest is the tests' side of the MQTT contract: a PKI, an operator's
// script or an observer as a plain MQTT client. It keeps what arrives by topic and
// the replies to its requests by id, and waits for them with a deadline. For tests
// only.
package mqtttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// RandomID is a fresh id for a device, a client or a request, so that tests sharing
// a broker never meet.
func RandomID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Connect makes a client as cfg says, subscribes subs before the session comes up
// (so queued and retained messages find them) and starts it, waiting for the first
// connection attempt; the client is closed when the test ends. It returns Start's
// error: some tests expect one.
func Connect(t testing.TB, cfg mqtt.Config, subs map[string]mqtt.Handler) (*mqtt.Client, error) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c, err := mqtt.New(cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close(100 * time.Millisecond) })
	for f, h := range subs {
		if err := c.Subscribe(f, h); err != nil {
			t.Fatal(err)
		}
	}
	// Start waits for the first attempt only, which ConnectTimeout bounds.
	timeout := 10 * time.Second
	if cfg.ConnectTimeout > 0 {
		timeout = cfg.ConnectTimeout + 5*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c, c.Start(ctx)
}

// Publish publishes at QoS 1 and fails the test when the broker does not take it
// within 5s.
func Publish(t testing.TB, c *mqtt.Client, topic string, payload []byte, retained bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Publish(ctx, topic, payload, retained); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// Options shape a Client.
type Options struct {
	// Name prefixes the client id and the reply topic ("test" when empty).
	Name string
	// ReplyTo is the reply topic (<Name>/<random id>/replies when empty).
	ReplyTo string
	// Watch are topic filters whose messages the Inbox keeps, subscribed before
	// the session comes up.
	Watch []string
	// Expiry is how far ahead requests expire (a minute when zero).
	Expiry time.Duration
}

// Client is a PKI, an operator's script or an observer. What arrives on watched
// topics is in its Inbox; replies on ReplyTo are kept by request id.
type Client struct {
	*Inbox
	MQTT    *mqtt.Client
	ReplyTo string
	t       testing.TB
	expiry  time.Duration
	replies *Inbox // by request id
}

// Start connects a Client to the broker at url without TLS, with a clean session.
func Start(t testing.TB, url string, o Options) *Client {
	t.Helper()
	return StartWith(t, mqtt.Config{Broker: url, AllowPlaintext: true, CleanSession: true}, o)
}

// StartWith connects a Client as cfg says (TLS, a fixed client id); the client id is
// made up when cfg has none.
func StartWith(t testing.TB, cfg mqtt.Config, o Options) *Client {
	t.Helper()
	if o.Name == "" {
		o.Name = "test"
	}
	if o.Expiry == 0 {
		o.Expiry = time.Minute
	}
	id := RandomID()
	if o.ReplyTo == "" {
		o.ReplyTo = o.Name + "/" + id + "/replies"
	}
	if cfg.ClientID == "" {
		cfg.ClientID = o.Name + "-" + id
	}
	c := &Client{Inbox: &Inbox{}, ReplyTo: o.ReplyTo, t: t, expiry: o.Expiry, replies: &Inbox{}}
	subs := map[string]mqtt.Handler{c.ReplyTo: c.onReply}
	for _, f := range o.Watch {
		subs[f] = c.Inbox.Handle
	}
	var err error
	if c.MQTT, err = Connect(t, cfg, subs); err != nil {
		t.Fatalf("connecting to %s: %v", cfg.Broker, err)
	}
	return c
}

func (c *Client) onReply(_ string, payload []byte) {
	var r protocol.Reply
	if err := json.Unmarshal(payload, &r); err != nil {
		c.t.Errorf("reply is not JSON: %v: %s", err, payload)
		return
	}
	c.replies.Handle(r.ID, payload)
}

// Watch keeps what arrives on filter from now on.
func (c *Client) Watch(filter string) {
	c.t.Helper()
	if err := c.MQTT.Subscribe(filter, c.Inbox.Handle); err != nil {
		c.t.Fatal(err)
	}
}

// Request is the envelope of a request with args, answered on ReplyTo, under a
// fresh id unless id is given.
func (c *Client) Request(id string, args any) (string, []byte) {
	if id == "" {
		id = RandomID()
	}
	raw, err := json.Marshal(args)
	if err != nil {
		c.t.Fatal(err)
	}
	exp := time.Now().Add(c.expiry).UTC()
	b, _ := json.Marshal(protocol.Request{ID: id, ReplyTo: c.ReplyTo, ExpiresAt: &exp, Args: raw})
	return id, b
}

// Send publishes payload at QoS 1, waiting up to 5s for the broker to take it.
func (c *Client) Send(topic string, payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.MQTT.Publish(ctx, topic, payload, false)
}

// Raw is every reply to id as it arrived.
func (c *Client) Raw(id string) [][]byte { return c.replies.Messages(id) }

// RawReplies is every reply so far, by request id.
func (c *Client) RawReplies() map[string][][]byte { return c.replies.All() }

// Replies is every reply to id so far.
func (c *Client) Replies(id string) []protocol.Reply {
	var out []protocol.Reply
	for _, b := range c.Raw(id) {
		var r protocol.Reply
		json.Unmarshal(b, &r)
		out = append(out, r)
	}
	return out
}

// Reply waits up to timeout for the n-th reply to id.
func (c *Client) Reply(id string, n int, timeout time.Duration) (protocol.Reply, bool) {
	if !c.replies.Wait(timeout, func() bool { return len(c.replies.Messages(id)) >= n }) {
		return protocol.Reply{}, false
	}
	return c.Replies(id)[n-1], true
}

// Call sends a request with args to topic and waits up to timeout for its reply,
// failing the test without one.
func (c *Client) Call(topic string, args any, timeout time.Duration) protocol.Reply {
	c.t.Helper()
	id, payload := c.Request("", args)
	if err := c.Send(topic, payload); err != nil {
		c.t.Fatalf("publish %s: %v", topic, err)
	}
	r, ok := c.Reply(id, 1, timeout)
	if !ok {
		c.t.Fatalf("no reply to %s (%s) within %v", id, topic, timeout)
	}
	return r
}

// Result fails the test unless the reply succeeded, and decodes its result.
func Result[T any](t testing.TB, r protocol.Reply) T {
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

// OTAPhases are the OTA phases announced in events (the payloads of an events
// topic), in order, repeats folded.
func OTAPhases(events [][]byte) []string {
	var out []string
	for _, b := range events {
		var e protocol.OTAEvent
		if json.Unmarshal(b, &e) != nil || e.Type != "ota" {
			continue
		}
		if len(out) == 0 || out[len(out)-1] != e.Phase {
			out = append(out, e.Phase)
		}
	}
	return out
}
