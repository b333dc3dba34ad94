package mqtt

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

func TestNewValidation(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cfg  Config
		want error  // errors.Is target, or nil for "any error"
		text string // the error names this
	}{
		{"tcp without AllowPlaintext", Config{Broker: "tcp://127.0.0.1:1883", ClientID: "x"}, ErrPlaintext, "allow_plaintext = true in [mqtt]"},
		{"mqtt without AllowPlaintext", Config{Broker: "mqtt://localhost", ClientID: "x"}, ErrPlaintext, ""},
		{"unknown scheme", Config{Broker: "http://localhost", ClientID: "x"}, ErrConfig, "mqtts, ssl or tls"},
		{"no scheme", Config{Broker: "127.0.0.1:18883", ClientID: "x"}, ErrConfig, `has no scheme: want scheme://host[:port]`},
		{"no scheme, credentials", Config{Broker: "u:secret@host:1883", ClientID: "x"}, ErrConfig, "has no scheme"},
		{"no host", Config{Broker: "ssl://:8883", ClientID: "x"}, ErrConfig, ""},
		{"credentials in URL", Config{Broker: "ssl://u:secret@host", ClientID: "x"}, ErrConfig, ""},
		{"no client id", Config{Broker: "ssl://host"}, ErrConfig, ""},
		{"cert without key", Config{Broker: "ssl://host", ClientID: "x", CertFile: "c.pem"}, ErrConfig, ""},
		{"sub-second keep-alive", Config{Broker: "ssl://host", ClientID: "x", KeepAlive: time.Millisecond}, ErrConfig, ""},
		{"bad will topic", Config{Broker: "ssl://host", ClientID: "x", Will: &Message{Topic: "a/#"}}, ErrConfig, ""},
		{"missing CA file", Config{Broker: "ssl://host", ClientID: "x", CAFile: filepath.Join(dir, "nope.pem")}, os.ErrNotExist, "nope.pem"},
		{"CA file without certificates", Config{Broker: "ssl://host", ClientID: "x", CAFile: notPEM}, ErrConfig, "not.pem"},
		{"missing client cert", Config{Broker: "ssl://host", ClientID: "x", CertFile: filepath.Join(dir, "c.pem"), KeyFile: filepath.Join(dir, "k.pem")}, os.ErrNotExist, "c.pem"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := New(c.cfg)
			if err == nil {
				t.Fatal("New succeeded")
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("error %v is not %v", err, c.want)
			}
			if !strings.Contains(err.Error(), c.text) {
				t.Errorf("error %q does not name %q", err, c.text)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

func TestNewAccepts(t *testing.T) {
	for _, url := range []string{"ssl://broker.example", "tls://broker.example:8883", "mqtts://[::1]:8883", "SSL://broker.example"} {
		if _, err := New(Config{Broker: url, ClientID: "x"}); err != nil {
			t.Errorf("New(%q): %v", url, err)
		}
	}
	c, err := New(Config{Broker: "tcp://localhost", ClientID: "x", AllowPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.broker != "tcp://localhost:1883" {
		t.Errorf("broker %q, want the default port filled in", c.broker)
	}
	// An unstarted client is not connected and refuses to publish.
	if c.Connected() {
		t.Error("Connected before Start")
	}
	if err := c.Publish(t.Context(), "a", nil, false); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Publish before Start: %v", err)
	}
	c.Close(0)
	c.Close(0)
}

func TestTLSConfigPinsCA(t *testing.T) {
	pki := newTestPKI(t)
	tc, err := tlsConfig(&Config{CAFile: pki.caFile, CertFile: pki.clientCert, KeyFile: pki.clientKey})
	if err != nil {
		t.Fatal(err)
	}
	if tc.RootCAs == nil || len(tc.Certificates) != 1 {
		t.Fatalf("roots %v, %d certificates", tc.RootCAs, len(tc.Certificates))
	}
	// Only the pinned CA: a certificate from another CA, even one in the system
	// pool, does not verify.
	if _, err := pki.server.Verify(x509.VerifyOptions{Roots: tc.RootCAs}); err != nil {
		t.Errorf("server certificate does not verify against the pinned CA: %v", err)
	}
	if _, err := pki.otherCA.Verify(x509.VerifyOptions{Roots: tc.RootCAs}); err == nil {
		t.Error("a foreign CA verifies against the pinned pool")
	}
}

// fakeMessage is what paho hands the dispatch handler.
type fakeMessage struct {
	topic   string
	payload []byte
}

func (m fakeMessage) Duplicate() bool   { return false }
func (m fakeMessage) Qos() byte         { return 1 }
func (m fakeMessage) Retained() bool    { return false }
func (m fakeMessage) Topic() string     { return m.topic }
func (m fakeMessage) MessageID() uint16 { return 1 }
func (m fakeMessage) Payload() []byte   { return m.payload }
func (m fakeMessage) Ack()              {}

var _ paho.Message = fakeMessage{}

// The broker delivers a shared subscription's messages under their plain topic;
// dispatch must still find the "$share/..." handler, and only it.
func TestDispatchSharedSubscription(t *testing.T) {
	c, err := New(Config{Broker: "tcp://127.0.0.1:1", ClientID: "x", AllowPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(0)
	var got []string
	record := func(name string) Handler {
		return func(topic string, payload []byte) { got = append(got, name+" "+topic+" "+string(payload)) }
	}
	if err := c.Subscribe(SharedSubscription("g", "ca/+/sign"), record("shared")); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe("dev/cmd/#", record("cmd")); err != nil {
		t.Fatal(err)
	}
	c.dispatch(nil, fakeMessage{"ca/abc/sign", []byte("1")})
	c.dispatch(nil, fakeMessage{"dev/cmd/status", []byte("2")})
	c.dispatch(nil, fakeMessage{"other", []byte("3")})
	want := []string{"shared ca/abc/sign 1", "cmd dev/cmd/status 2"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", got, want)
	}

	got = nil
	if err := c.Unsubscribe(SharedSubscription("g", "ca/+/sign")); err != nil {
		t.Fatal(err)
	}
	c.dispatch(nil, fakeMessage{"ca/abc/sign", []byte("4")})
	if len(got) != 0 {
		t.Errorf("unsubscribed handler still called: %q", got)
	}

	if err := c.Subscribe("a/#/b", record("x")); !errors.Is(err, ErrTopic) {
		t.Errorf("bad filter: %v", err)
	}
	if err := c.Publish(t.Context(), "a/+", nil, false); !errors.Is(err, ErrTopic) {
		t.Errorf("bad topic: %v", err)
	}
}
