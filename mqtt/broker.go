package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Broker is an embedded MQTT broker for development and the demo, when no broker is
// configured. It lets every client connect and use every topic, keeps nothing on
// disk, and listens exactly where it is told, so bind it to loopback: it is not
// meant for production.
type Broker struct {
	server   *mochi.Server
	listener *listeners.TCP
	once     sync.Once
}

// StartBroker starts a broker with a TCP listener on addr ("127.0.0.1:1883"; port 0
// picks a free port, see Addr). Retained messages and shared subscriptions work.
func StartBroker(addr string) (*Broker, error) {
	caps := mochi.NewDefaultServerCapabilities()
	caps.RetainAvailable = 1
	caps.SharedSubAvailable = 1
	server := mochi.New(&mochi.Options{
		Capabilities: caps,
		InlineClient: false,
		Logger:       slog.New(redactPackets{slog.Default().Handler()}).With("component", "broker"),
	})
	if err := server.AddHook(new(allowAll), nil); err != nil {
		return nil, fmt.Errorf("mqtt: embedded broker: %w", err)
	}
	l := listeners.NewTCP(listeners.Config{Type: listeners.TypeTCP, ID: "tcp", Address: addr})
	// AddListener opens the socket, so an address in use fails here and Addr is
	// the bound one from now on.
	if err := server.AddListener(l); err != nil {
		return nil, fmt.Errorf("mqtt: embedded broker on %s: %w", addr, err)
	}
	if err := server.Serve(); err != nil {
		server.Close()
		return nil, fmt.Errorf("mqtt: embedded broker: %w", err)
	}
	return &Broker{server: server, listener: l}, nil
}

// Addr returns the host:port the broker listens on.
func (b *Broker) Addr() string {
	return b.listener.Address()
}

// URL returns the broker's address for Config.Broker (plaintext: set AllowPlaintext).
func (b *Broker) URL() string {
	return "tcp://" + b.Addr()
}

// Close disconnects every client and stops listening. Sessions and retained
// messages are lost.
func (b *Broker) Close() error {
	var err error
	b.once.Do(func() { err = b.server.Close() })
	return err
}

// allowAll lets every client connect and read and write every topic. (mochi's own
// auth.AllowHook would do the same but its package drags in a YAML parser.)
type allowAll struct{ mochi.HookBase }

func (allowAll) ID() string { return "allow-all" }

func (allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (allowAll) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (allowAll) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// redactPackets drops the packet attributes mochi adds to some log lines: they hold
// payloads, and a payload may carry a PIN.
type redactPackets struct{ slog.Handler }

func secret(key string) bool {
	return key == "pk" || key == "packet" || key == "payload"
}

func (h redactPackets) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if !secret(a.Key) {
			out.AddAttrs(a)
		}
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h redactPackets) WithAttrs(attrs []slog.Attr) slog.Handler {
	kept := make([]slog.Attr, 0, len(attrs))
	for _, a := range attrs {
		if !secret(a.Key) {
			kept = append(kept, a)
		}
	}
	return redactPackets{h.Handler.WithAttrs(kept)}
}

func (h redactPackets) WithGroup(name string) slog.Handler {
	return redactPackets{h.Handler.WithGroup(name)}
}
