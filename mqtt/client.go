// Package mqtt is the broker transport: it connects to an MQTT 3.1.1 broker, keeps the
// connection and its subscriptions alive across broker restarts, and moves opaque
// payloads on topics. It knows nothing of what the payloads mean.
//
// # Handlers must not block
//
// A Handler runs on paho's dispatch goroutine, one message at a time, in arrival
// order, and the message is acknowledged to the broker when the handler returns.
// While a handler runs, paho's reader stops at the next incoming message, so the
// PUBACK or SUBACK a handler might wait for can sit unread behind it: a handler
// that calls Publish, Subscribe, Unsubscribe or Close can stall the whole
// connection until that call gives up (Publish when its context ends, the others
// after ConnectTimeout).
// Handlers copy what they need into a queue of their own (refusing work when it is
// full) and return; the work and its replies happen on other goroutines.
package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

var (
	// ErrPlaintext: the broker URL is not TLS and Config.AllowPlaintext is false.
	ErrPlaintext = errors.New("mqtt: plaintext broker connection refused: " +
		"set allow_plaintext = true in [mqtt] (the console: --allow-plaintext), or use an mqtts:// broker")
	// ErrNotConnected: there is no broker connection at the moment.
	ErrNotConnected = errors.New("mqtt: not connected to the broker")
	// ErrConfig: the Config is unusable.
	ErrConfig = errors.New("mqtt: invalid configuration")
	// ErrTopic: a topic or subscription filter is malformed.
	ErrTopic = errors.New("mqtt: invalid topic")
)

const (
	defaultKeepAlive      = 30 * time.Second
	defaultConnectTimeout = 10 * time.Second
	maxRetryInterval      = 30 * time.Second
	firstRetryInterval    = time.Second
	qos                   = 1
)

// Config describes the broker connection.
type Config struct {
	// Broker is tcp://host[:1883] or ssl://host[:8883]; mqtts:// and tls:// mean TLS
	// too, mqtt:// means plaintext.
	Broker string
	// ClientID is stable across restarts so that the broker keeps the session
	// (subscriptions and queued QoS 1 messages) while the device is away.
	ClientID           string
	Username, Password string
	// CAFile is a PEM bundle holding the only roots trusted for the broker; empty
	// means the system roots.
	CAFile string
	// CertFile and KeyFile are the client certificate and its key, for brokers
	// that authenticate clients by certificate.
	CertFile, KeyFile string
	// AllowPlaintext permits a non-TLS broker URL; for development only.
	AllowPlaintext bool
	// KeepAlive is the MQTT keep-alive interval, at least a second; 0 means 30s.
	KeepAlive time.Duration
	// ConnectTimeout bounds one connection attempt and one SUBACK wait; 0 means 10s.
	ConnectTimeout time.Duration
	// Will is published (QoS 1) by the broker when the connection dies without a
	// clean disconnect.
	Will *Message
	// CleanSession asks the broker for a fresh session on every connect: for
	// short-lived clients such as the console. The daemon keeps it false, so the
	// broker holds its subscriptions and queued requests while it is away.
	CleanSession bool
	// Logger receives connection events; nil means slog.Default(). Payloads and
	// passwords are never logged.
	Logger *slog.Logger
}

// Message is a publication.
type Message struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// Handler receives the messages of a subscription. It runs on the dispatch goroutine
// and must return promptly without waiting on this client (see the package
// documentation). topic is the message's topic (never the "$share/..." filter).
// payload is not reused by the client; the handler may keep it.
type Handler = func(topic string, payload []byte)

// subscription is a remembered filter: restored on every connect, because a broker
// restart (or a broker without persistence) forgets the session.
type subscription struct {
	filter  string // as given, possibly "$share/<group>/<plain>"
	plain   string // what incoming topics are matched against
	handler Handler
}

// Client is a broker connection that reconnects by itself. Its methods are safe for
// concurrent use.
type Client struct {
	cfg    Config
	broker string // URL without credentials, for logs and errors
	log    *slog.Logger
	paho   paho.Client

	// mu guards the fields below and orders Close against everything that starts
	// work: no goroutine of ours is added, and no connect attempt begins, after
	// closed is set.
	mu        sync.Mutex
	subs      map[string]*subscription
	unsubs    map[string]bool // unsubscribed while offline; told to the broker on connect
	onConnect func()
	onLost    func(error)
	// onTakeover and takeover: see takeover.go.
	onTakeover func(Takeover)
	started    bool
	closed     bool
	closing    chan struct{} // closed by Close
	wg         sync.WaitGroup

	// routeMu guards routes, the snapshot of subs that dispatch reads on every
	// message without contending with Subscribe's network wait.
	routeMu sync.RWMutex
	routes  []*subscription

	// restoreMu serialises the work after each connect, so that after a quick
	// reconnect two restorations (and two OnConnect callbacks) never interleave.
	restoreMu sync.Mutex

	takeover takeoverWatch

	everConnected atomic.Bool
	unrouted      atomic.Int64 // messages no subscription of ours matched
	// restored is closed when the first connection's subscriptions are in place,
	// which is when Start reports success.
	restored     chan struct{}
	restoredOnce sync.Once
}

// New validates cfg and loads its TLS files; it does not connect (see Start).
func New(cfg Config) (*Client, error) {
	u, useTLS, err := parseBroker(cfg.Broker)
	if err != nil {
		return nil, err
	}
	if !useTLS && !cfg.AllowPlaintext {
		return nil, fmt.Errorf("%w: %s", ErrPlaintext, u.Redacted())
	}
	if err := checkConfig(&cfg); err != nil {
		return nil, err
	}

	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Client{
		cfg:      cfg,
		broker:   u.String(),
		subs:     make(map[string]*subscription),
		unsubs:   make(map[string]bool),
		closing:  make(chan struct{}),
		restored: make(chan struct{}),
	}
	c.log = log.With("component", "mqtt", "broker", c.broker, "client_id", cfg.ClientID)

	opts, err := c.pahoOptions(useTLS)
	if err != nil {
		return nil, err
	}
	c.paho = paho.NewClient(opts)
	return c, nil
}

// checkConfig checks the fields of cfg other than the broker URL and fills
// in the default keep-alive and connect timeout.
func checkConfig(cfg *Config) error {
	if cfg.ClientID == "" || strings.ContainsRune(cfg.ClientID, 0) {
		return fmt.Errorf("%w: a client id is required (the broker keeps the session under it)", ErrConfig)
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return fmt.Errorf("%w: client certificate and key go together (CertFile %q, KeyFile %q)", ErrConfig, cfg.CertFile, cfg.KeyFile)
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = defaultKeepAlive
	}
	if cfg.KeepAlive < time.Second {
		// paho counts keep-alive in whole seconds; less would silently disable it.
		return fmt.Errorf("%w: keep-alive %s is below one second", ErrConfig, cfg.KeepAlive)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	if cfg.ConnectTimeout < 0 {
		return fmt.Errorf("%w: negative connect timeout", ErrConfig)
	}
	if cfg.Will != nil && !validTopicName(cfg.Will.Topic) {
		return fmt.Errorf("%w: will topic %q", ErrConfig, cfg.Will.Topic)
	}
	return nil
}

// pahoOptions builds the paho options for c's checked config, loading the
// TLS files if the broker URL asks for TLS.
func (c *Client) pahoOptions(useTLS bool) (*paho.ClientOptions, error) {
	cfg := &c.cfg
	opts := paho.NewClientOptions().
		AddBroker(c.broker).
		SetClientID(cfg.ClientID).
		SetProtocolVersion(4).
		SetCleanSession(cfg.CleanSession).
		SetOrderMatters(true).
		SetResumeSubs(true).
		SetAutoReconnect(true).
		// The first connection is retried by connectLoop, which, unlike paho's
		// ConnectRetry, backs off and stops at once on Close.
		SetConnectRetry(false).
		SetMaxReconnectInterval(maxRetryInterval).
		SetKeepAlive(cfg.KeepAlive).
		SetPingTimeout(cfg.ConnectTimeout).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetWriteTimeout(cfg.ConnectTimeout).
		SetDialer(&net.Dialer{Timeout: cfg.ConnectTimeout}).
		SetStore(newCopyStore()).
		SetDefaultPublishHandler(c.dispatch).
		SetOnConnectHandler(c.connected).
		SetConnectionLostHandler(c.lost).
		SetReconnectingHandler(func(paho.Client, *paho.ClientOptions) { c.reconnectPause() })
	if cfg.Username != "" {
		opts.SetUsername(cfg.Username)
	}
	if cfg.Password != "" {
		opts.SetPassword(cfg.Password)
	}
	if useTLS {
		tc, err := tlsConfig(cfg)
		if err != nil {
			return nil, err
		}
		opts.SetTLSConfig(tc)
	} else if cfg.CAFile != "" || cfg.CertFile != "" {
		c.log.Warn("TLS files ignored: the broker URL is plaintext")
	}
	if cfg.Will != nil {
		opts.SetBinaryWill(cfg.Will.Topic, cfg.Will.Payload, qos, cfg.Will.Retained)
	}
	return opts, nil
}

// CheckBroker tells whether s is a broker URL this package accepts; the error says
// what to write instead, without this package's prefix, for the caller to name its
// own flag or key.
func CheckBroker(s string) error {
	_, _, err := parseBroker(s)
	var be brokerError
	if errors.As(err, &be) {
		return errors.New(string(be))
	}
	return err
}

// brokerError is an unusable broker URL; it is an ErrConfig.
type brokerError string

func (e brokerError) Error() string { return ErrConfig.Error() + ": " + string(e) }

func (e brokerError) Is(target error) bool { return target == ErrConfig }

// brokerForms is what a broker URL may look like, for error messages.
const brokerForms = "want scheme://host[:port] with scheme mqtts, ssl or tls (TLS, port 8883) or tcp or mqtt (plaintext, port 1883)"

// parseBroker checks the broker URL, fills in the default port and returns it in the
// scheme paho expects.
func parseBroker(s string) (*url.URL, bool, error) {
	if !strings.Contains(s, "://") {
		if strings.Contains(s, "@") { // credentials, perhaps: not repeated
			return nil, false, brokerError("broker has no scheme: " + brokerForms)
		}
		return nil, false, brokerError(fmt.Sprintf("broker %q has no scheme: %s, such as \"mqtts://%s\"", s, brokerForms, s))
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, false, brokerError("broker: " + brokerForms)
	}
	var useTLS bool
	port := "1883"
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
	case "ssl", "tls", "mqtts":
		useTLS, port = true, "8883"
	default:
		return nil, false, brokerError(fmt.Sprintf("broker %q: %s", u.Redacted(), brokerForms))
	}
	if u.User != nil {
		// Credentials in a URL end up in logs and process listings.
		return nil, false, brokerError(fmt.Sprintf("broker URL %q carries credentials; give the user name and password apart (username, password_file)", u.Redacted()))
	}
	if u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, false, brokerError(fmt.Sprintf("broker %q: %s", s, brokerForms))
	}
	if u.Port() != "" {
		port = u.Port()
	}
	out := &url.URL{Scheme: "tcp", Host: net.JoinHostPort(u.Hostname(), port)}
	if useTLS {
		out.Scheme = "ssl"
	}
	return out, useTLS, nil
}

// OnConnect sets f to be called after every successful (re)connection, once the
// subscriptions are restored: the place to publish the retained status. It runs on a
// goroutine of its own, so it may Publish; Close waits for it to return, so it must
// not call Close.
func (c *Client) OnConnect(f func()) {
	c.mu.Lock()
	c.onConnect = f
	c.mu.Unlock()
}

// OnConnectionLost sets f to be called when an established connection breaks (not
// on Close). Reconnection is already under way when it runs.
func (c *Client) OnConnectionLost(f func(err error)) {
	c.mu.Lock()
	c.onLost = f
	c.mu.Unlock()
}

// Start makes the first connection attempt. It returns nil once connected with the
// subscriptions in place, or that attempt's error, or ctx's error if ctx ends first.
// Whatever it returns, the client keeps trying in the background (backing off up to
// 30s) until Close, so a broker that is down at boot never stops the daemon.
// Subscribe before Start: the broker may deliver messages queued in the session as
// soon as the connection is up.
func (c *Client) Start(ctx context.Context) error {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return fmt.Errorf("%w: client closed", ErrNotConnected)
	case c.started:
		c.mu.Unlock()
		return errors.New("mqtt: Start called twice")
	}
	c.started = true
	first := make(chan error, 1)
	c.wg.Add(1)
	c.mu.Unlock()

	go c.connectLoop(first)
	select {
	case err := <-first:
		return err
	case <-ctx.Done():
		return fmt.Errorf("mqtt: connect %s: %w", c.broker, ctx.Err())
	case <-c.closing:
		return fmt.Errorf("%w: client closed", ErrNotConnected)
	}
}

// connectLoop makes connection attempts until one succeeds; from then on paho's
// auto-reconnect owns the connection. The first attempt's outcome goes to first.
func (c *Client) connectLoop(first chan<- error) {
	defer c.wg.Done()
	delay := firstRetryInterval
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		// Taken under mu so that Close, once it holds mu, knows no new attempt
		// can start behind its Disconnect.
		tok := c.paho.Connect()
		c.mu.Unlock()

		select {
		case <-tok.Done():
		case <-c.closing:
			return
		}
		err := tok.Error()
		if err == nil && !c.paho.IsConnectionOpen() && !c.everConnected.Load() {
			// paho reports success without connecting when an earlier attempt
			// was still winding down; treat it as a failed attempt.
			err = ErrNotConnected
		}
		if err != nil {
			err = fmt.Errorf("mqtt: connect %s: %w", c.broker, err)
		} else {
			// Until the subscriptions are back, a message sent to us in reply to
			// something published right after Start could be missed.
			select {
			case <-c.restored:
			case <-c.closing:
				return
			}
		}
		if first != nil {
			first <- err
			first = nil
		}
		if err == nil {
			return
		}
		c.log.Warn("broker connection failed", "err", err, "retry_in", delay)

		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.closing:
			t.Stop()
			return
		}
		delay = min(delay*2, maxRetryInterval)
	}
}

// connected is paho's OnConnect. It hands the work to a goroutine of our own, so
// that the restoration is counted by Close and never holds up paho, whatever
// goroutine a paho version calls this on.
func (c *Client) connected(paho.Client) {
	c.everConnected.Store(true)
	c.takeover.up(time.Now())
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	c.log.Info("connected to the broker")
	go func() {
		defer c.wg.Done()
		c.restore()
	}()
}

// restore re-establishes the subscriptions on the new connection, then runs the
// OnConnect callback.
func (c *Client) restore() {
	c.restoreMu.Lock()
	defer c.restoreMu.Unlock()
	subscribed := func() { c.restoredOnce.Do(func() { close(c.restored) }) }
	if !c.paho.IsConnectionOpen() {
		subscribed() // Start reports the connection it saw; the next connect restores
		return
	}

	c.mu.Lock()
	unsubs := make([]string, 0, len(c.unsubs))
	for f := range c.unsubs {
		unsubs = append(unsubs, f)
	}
	filters := make(map[string]byte, len(c.subs))
	for f := range c.subs {
		filters[f] = qos
	}
	c.mu.Unlock()

	if len(unsubs) > 0 {
		if err := c.wait(c.paho.Unsubscribe(unsubs...)); err != nil {
			c.log.Warn("pending unsubscribe failed", "err", err)
		} else {
			c.mu.Lock()
			for _, f := range unsubs {
				if c.subs[f] == nil {
					delete(c.unsubs, f)
				}
			}
			c.mu.Unlock()
		}
	}
	if len(filters) > 0 {
		tok := c.paho.SubscribeMultiple(filters, nil)
		if err := c.wait(tok); err != nil {
			c.log.Error("restoring subscriptions failed", "err", err)
			if errors.Is(err, ErrNotConnected) || !c.paho.IsConnectionOpen() {
				subscribed()
				return
			}
		} else if refused := refusedFilters(tok); len(refused) > 0 {
			c.log.Error("broker refused subscriptions", "filters", refused)
		} else {
			c.log.Debug("subscriptions restored", "count", len(filters))
		}
	}
	subscribed()

	c.mu.Lock()
	f := c.onConnect
	c.mu.Unlock()
	if f != nil {
		f()
	}
}

// lost is paho's connection-lost callback; paho already runs it on a goroutine
// of its own.
func (c *Client) lost(_ paho.Client, err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	f := c.onLost
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()
	c.log.Warn("broker connection lost", "err", err)
	c.checkTakeover()
	if f != nil {
		f(err)
	}
}

// dispatch is the only message handler paho knows. paho v1.5.1 would route
// "$share/g/t" subscriptions to "t" itself, but it registers them under "t" and
// Unsubscribe("$share/g/t") then leaves that route in place, and a message no
// route accepts is never acknowledged, which holds a slot of the broker's in-flight
// window for the rest of the session. Matching here avoids both.
func (c *Client) dispatch(_ paho.Client, m paho.Message) {
	topic := m.Topic()
	c.routeMu.RLock()
	routes := c.routes
	c.routeMu.RUnlock()

	delivered := false
	for _, s := range routes {
		if matchFilter(s.plain, topic) {
			s.handler(topic, m.Payload())
			delivered = true
		}
	}
	if !delivered {
		c.unrouted.Add(1)
		// Typically a subscription the broker's session kept from an earlier run.
		c.log.Debug("message without a subscription dropped", "topic", topic)
	}
}

// rebuildRoutes refreshes the dispatch snapshot; c.mu must be held. The slice is
// replaced, never modified, so dispatch can use its copy without holding a lock.
func (c *Client) rebuildRoutes() {
	routes := make([]*subscription, 0, len(c.subs))
	for _, s := range c.subs {
		routes = append(routes, s)
	}
	c.routeMu.Lock()
	c.routes = routes
	c.routeMu.Unlock()
}

// Subscribe routes messages matching filter (which may be a SharedSubscription) to
// h at QoS 1 and remembers the subscription, to restore it on every connect. When
// not connected it only remembers. Subscribing a filter again replaces its handler.
// Filters should not overlap: a message matching two of them may reach a handler
// twice, since an MQTT 3.1.1 broker sends one copy per matching subscription.
func (c *Client) Subscribe(filter string, h Handler) error {
	if !validFilter(filter) {
		return fmt.Errorf("%w: filter %q", ErrTopic, filter)
	}
	if h == nil {
		return errors.New("mqtt: nil handler")
	}
	_, plain, _ := splitShared(filter)

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("%w: client closed", ErrNotConnected)
	}
	prev := c.subs[filter]
	c.subs[filter] = &subscription{filter: filter, plain: plain, handler: h}
	delete(c.unsubs, filter)
	c.rebuildRoutes()
	c.mu.Unlock()

	// Remembered before this check, so a connection that comes up meanwhile has
	// its restore pick the filter up.
	if !c.paho.IsConnectionOpen() {
		return nil
	}
	tok := c.paho.Subscribe(filter, qos, nil)
	if err := c.wait(tok); err != nil {
		// Still remembered: the next connect subscribes again.
		return fmt.Errorf("mqtt: subscribe %q: %w", filter, err)
	}
	if len(refusedFilters(tok)) > 0 {
		c.mu.Lock()
		if prev == nil {
			delete(c.subs, filter)
		} else {
			c.subs[filter] = prev
		}
		c.rebuildRoutes()
		c.mu.Unlock()
		return fmt.Errorf("mqtt: subscribe %q: refused by the broker", filter)
	}
	return nil
}

// Unsubscribe forgets filter and its handler and, when connected, tells the broker;
// when not connected the broker is told on the next connect.
func (c *Client) Unsubscribe(filter string) error {
	if !validFilter(filter) {
		// A broker may drop the connection over a malformed UNSUBSCRIBE.
		return fmt.Errorf("%w: filter %q", ErrTopic, filter)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("%w: client closed", ErrNotConnected)
	}
	delete(c.subs, filter)
	c.unsubs[filter] = true
	c.rebuildRoutes()
	c.mu.Unlock()

	if !c.paho.IsConnectionOpen() {
		return nil
	}
	if err := c.wait(c.paho.Unsubscribe(filter)); err != nil {
		return fmt.Errorf("mqtt: unsubscribe %q: %w", filter, err)
	}
	c.mu.Lock()
	if c.subs[filter] == nil {
		delete(c.unsubs, filter)
	}
	c.mu.Unlock()
	return nil
}

// wait waits for a SUBACK or UNSUBACK. With ResumeSubs paho keeps such a token open
// across a reconnect, so the wait is bounded by the connect timeout and by Close.
func (c *Client) wait(tok paho.Token) error {
	t := time.NewTimer(c.cfg.ConnectTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-t.C:
		return fmt.Errorf("no reply from the broker within %s", c.cfg.ConnectTimeout)
	case <-c.closing:
		return fmt.Errorf("%w: client closed", ErrNotConnected)
	}
}

// refusedFilters lists the filters a SUBACK refused (return code 0x80).
func refusedFilters(tok paho.Token) []string {
	st, ok := tok.(*paho.SubscribeToken)
	if !ok {
		return nil
	}
	var refused []string
	for f, code := range st.Result() {
		if code == 0x80 {
			refused = append(refused, f)
		}
	}
	return refused
}

// Publish sends payload to topic at QoS 1 and waits for the broker's PUBACK or the
// end of ctx. It fails with ErrNotConnected at once when there is no connection,
// rather than queueing. A message whose Publish ended with ctx's error may still
// be delivered: it stays in paho's in-flight store and is resent on reconnect.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, retained bool) error {
	if !validTopicName(topic) {
		return fmt.Errorf("%w: %q", ErrTopic, topic)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-c.closing:
		return fmt.Errorf("%w: client closed", ErrNotConnected)
	default:
	}
	if !c.paho.IsConnectionOpen() {
		return ErrNotConnected
	}
	return waitPublished(ctx, c.paho.Publish(topic, qos, retained, payload))
}

// PublishAsync puts a message in flight and returns at once; wait blocks until the
// broker acknowledged it (or ctx ends) and says how it went. Several messages in
// flight cost one broker round trip instead of one each.
func (c *Client) PublishAsync(topic string, payload []byte, retained bool) (wait func(ctx context.Context) error) {
	if !validTopicName(topic) {
		return func(context.Context) error { return fmt.Errorf("%w: %q", ErrTopic, topic) }
	}
	select {
	case <-c.closing:
		return func(context.Context) error { return fmt.Errorf("%w: client closed", ErrNotConnected) }
	default:
	}
	if !c.paho.IsConnectionOpen() {
		return func(context.Context) error { return ErrNotConnected }
	}
	tok := c.paho.Publish(topic, qos, retained, payload)
	return func(ctx context.Context) error { return waitPublished(ctx, tok) }
}

func waitPublished(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			if errors.Is(err, paho.ErrNotConnected) {
				return ErrNotConnected
			}
			return fmt.Errorf("mqtt: publish: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mqtt: publish: no PUBACK: %w", ctx.Err())
	}
}

// Connected reports whether a broker connection is up right now.
func (c *Client) Connected() bool {
	return c.paho.IsConnectionOpen()
}

// Close disconnects cleanly, waiting up to quiesce for in-flight work, and stops
// reconnecting. The broker does not publish the Will after a clean disconnect, so
// publish the offline status first. Close waits for a running OnConnect callback.
func (c *Client) Close(quiesce time.Duration) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	close(c.closing)
	c.mu.Unlock()

	c.paho.Disconnect(uint(max(quiesce, 0).Milliseconds()))
	c.wg.Wait()
	c.log.Info("client closed")
}
