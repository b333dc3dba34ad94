package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Broker is an embedded MQTT broker for development and the demo, when no broker is
// configured. It lets every client connect and use every topic and keeps nothing on
// disk, so it listens on loopback only: it is not meant for production.
type Broker struct {
	server   *mochi.Server
	listener *closingTCP
	quiet    *quietHook
	quietGap time.Duration // how long without a publish counts as quiet
	once     sync.Once
}

// StartBroker starts a broker with a TCP listener on addr ("127.0.0.1:1883"; port 0
// picks a free port, see Addr). Retained messages and shared subscriptions work. An
// addr whose host is not loopback (127.0.0.0/8, ::1, localhost) is ErrConfig.
func StartBroker(addr string) (*Broker, error) {
	if host, _, err := net.SplitHostPort(addr); err != nil || !loopback(host) {
		return nil, fmt.Errorf("%w: embedded broker on %q: loopback addresses only (it authenticates nobody)", ErrConfig, addr)
	}
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
	quiet := &quietHook{}
	if err := server.AddHook(quiet, nil); err != nil {
		return nil, fmt.Errorf("mqtt: embedded broker: %w", err)
	}
	l := &closingTCP{TCP: listeners.NewTCP(listeners.Config{Type: listeners.TypeTCP, ID: "tcp", Address: addr})}
	// AddListener opens the socket, so an address in use fails here and Addr is
	// the bound one from now on.
	if err := server.AddListener(l); err != nil {
		return nil, fmt.Errorf("mqtt: embedded broker on %s: %w", addr, err)
	}
	if err := server.Serve(); err != nil {
		server.Close()
		return nil, fmt.Errorf("mqtt: embedded broker: %w", err)
	}
	return &Broker{server: server, listener: l, quiet: quiet, quietGap: 100 * time.Millisecond}, nil
}

func loopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
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
// messages are lost. What was published just before (the daemon's offline status,
// on its way out) still reaches the subscribers: mochi acknowledges a publish before
// it passes it on, so Close first waits until nothing has been published for a
// moment, a second at most.
func (b *Broker) Close() error {
	var err error
	b.once.Do(func() {
		if b.quietGap > 0 {
			b.quiet.wait(b.quietGap, time.Second)
		}
		err = b.server.Close()
	})
	return err
}

// quietHook notes when mochi last handed a message to its subscribers.
type quietHook struct {
	mochi.HookBase
	last atomic.Int64 // unix nanoseconds
}

func (*quietHook) ID() string { return "quiet" }

func (*quietHook) Provides(b byte) bool { return b == mochi.OnPublished }

func (h *quietHook) OnPublished(*mochi.Client, packets.Packet) { h.last.Store(time.Now().UnixNano()) }

// wait returns once nothing has been published for gap, or after most.
func (h *quietHook) wait(gap, most time.Duration) {
	start := time.Now()
	for {
		time.Sleep(gap / 4)
		now := time.Now()
		if now.Sub(start) >= gap && now.Sub(time.Unix(0, h.last.Load())) >= gap || now.Sub(start) >= most {
			return
		}
	}
}

// closingTCP is mochi's TCP listener with its own way of closing: it keeps the
// connections it accepted and closes them itself. mochi 2.7.9 closes a listener's
// clients through Clients.GetByListener, which takes the same read lock twice; a
// client leaving in between deadlocks Close (mochi-mqtt/server#488, unreleased fix).
// Close also waits until every connection has left mochi, so that mochi's own wait
// for its clients cannot overlap a connection still being added.
type closingTCP struct {
	*listeners.TCP
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup // connections inside mochi
}

func (l *closingTCP) Serve(establish listeners.EstablishFn) {
	l.TCP.Serve(func(id string, c net.Conn) error {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			return nil
		}
		if l.conns == nil {
			l.conns = map[net.Conn]struct{}{}
		}
		l.conns[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		defer func() {
			l.mu.Lock()
			delete(l.conns, c)
			l.mu.Unlock()
			l.wg.Done()
		}()
		return establish(id, c)
	})
}

// Close stops accepting, drops every connection and waits for mochi to let go of
// them. closeClients is mochi's way, the one that deadlocks: not used.
func (l *closingTCP) Close(listeners.CloseFn) {
	l.TCP.Close(func(string) {})
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
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
