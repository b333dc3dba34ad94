package device

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/auth"
	"github.com/iot-hsm/iot-hsm/device/recovery"
	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// Transport is what the device needs of its broker session (mqtt.Client through a
// small adapter). Handlers given to Subscribe run on the transport's goroutine and
// must return at once.
type Transport interface {
	Publish(ctx context.Context, topic string, payload []byte, retained bool) error
	Subscribe(filter string, h func(topic string, payload []byte)) error
	Unsubscribe(filter string) error
	Connected() bool
}

// Options tune the device core.
type Options struct {
	DeviceID  string
	TopicRoot string
	Version   string
	// QueueSize bounds each token's queue; a full queue answers busy.
	QueueSize int
	// ReplyRetention is how long replies are kept for redelivered requests.
	ReplyRetention time.Duration
	// AllowDigest enables sign kind digest (raw digests are refused by default: the
	// appliance cannot apply CA policy to something it cannot read).
	AllowDigest bool
	// Verifier, when set, makes the device accept only requests signed (compact
	// JWS) by a certificate that chains to the controllers' bundle. SetVerifier
	// replaces it while the device runs.
	Verifier *auth.Verifier
	// Audit records every provisioning action and every signature, durably,
	// before the reply leaves.
	Audit *audit.Log
	Now   func() time.Time

	// Hooks for the appliance runtime (systemd, LEDs); all optional.
	//
	// OnChange gets every status document as it is published; it must not block.
	OnChange func(protocol.Status)
	// Web is the dashboard as the status document shows it; nil when it is off.
	Web *protocol.StatusWeb
	// OnEvent gets every message of the events topic (protocol.Event, or
	// protocol.OTAEvent) as it is published; it must not block.
	OnEvent func(payload []byte)
	// OnSign is told of every signature attempt: err is nil when it signed.
	OnSign func(slotID string, err *protocol.Error)
	// Reload runs the reload command (re-read the configuration, rescan the HSMs);
	// its result is the reply. An error wrapping ErrBadRequest is a configuration
	// that was rejected.
	Reload func(ctx context.Context) (any, error)
	// Problems names the parts of the configuration that did not come up, for the
	// status document; nil means none.
	Problems func() []string
	// Restart is called by the restart command once the reply is decided; it must
	// not block. The reply goes out before Shutdown returns.
	Restart func()
	// OTA runs ota.update and ota.status (device/ota.go); unset answers unsupported.
	OTA OTAHooks

	// Secrets stores the PINs of hsm.set_pin with persist (device/secrets.go); nil
	// answers persist unsupported.
	Secrets PINStore

	// Fleet: requests on CA topics are claimed before they are signed (fleet.go).
	Fleet bool
	// CATransport carries the CA topics and the fleet's claims: a session of its own
	// without a persistent session, so a member that is gone is handed no requests.
	// Nil: the device's transport.
	CATransport Transport
	// FleetWindow bounds expires_at on CA topics (config fleet.claim_window).
	FleetWindow time.Duration
	// EpochFile keeps the fleet epochs seen, to detect a broker that lost its state
	// while the appliance was down; empty: kept in memory only.
	EpochFile string

	// Trace, when set, is told the wall time of each step of a request (trace.go)
	// from the goroutine that ran it; it must not block. Nil costs nothing.
	Trace func(step string, d time.Duration)
}

// Device is the appliance core: it takes requests from the transport, runs them on
// one worker per token, and publishes replies, status and events.
type Device struct {
	opts   Options
	topics protocol.Topics
	slots  *slots.Slots
	store  *store.Store
	reg    *slots.Registry
	tr     Transport

	started time.Time
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu       sync.Mutex
	workers  map[string]*worker   // by HSM id; "" is the control worker
	inflight map[string]*inflight // by request id, while queued or running
	caSubs   map[string]bool      // ca_ids subscribed
	issuers  map[string]*issuerCache
	present  map[string]bool // last published presence per HSM
	// presenceSeen: the start-up baseline of present is taken; HSMs new after it
	// get an hsm.present event.
	presenceSeen bool

	watchLive liveness // the presence scan running now, for the watchdog

	// verifier is opts.Verifier, swapped whole by a reload: a message is checked
	// against one verifier from start to end.
	verifier atomic.Pointer[auth.Verifier]

	outbox chan outMsg
	local  map[string]chan []byte // reply topics of Exec calls waiting (local.go)

	audited markList // cached replies whose marks the next batch clears (record.go)

	refused refusals // refusals sampled into the audit trail

	takeover takeoverNote

	fleet  *fleet
	unsent unsent // replies that found the broker away

	requests, signatures, errors, dropped, refusedCount atomic.Uint64
}

type outMsg struct {
	topic    string
	payload  []byte
	retained bool
}

// New makes a device over the slot lifecycle; Start connects it to a transport.
func New(opts Options, sl *slots.Slots) *Device {
	if opts.QueueSize <= 0 {
		opts.QueueSize = 16
	}
	if opts.ReplyRetention <= 0 {
		opts.ReplyRetention = 24 * time.Hour
	}
	if opts.TopicRoot == "" {
		opts.TopicRoot = protocol.DefaultRoot
	}
	if opts.DeviceID == "" {
		opts.DeviceID = DefaultDeviceID()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.FleetWindow <= 0 {
		opts.FleetWindow = 10 * time.Minute
	}
	sl.Now = opts.Now
	d := &Device{
		opts: opts, topics: protocol.Topics{Root: opts.TopicRoot, Device: opts.DeviceID},
		slots: sl, store: sl.Store, reg: sl.Registry,
		workers: map[string]*worker{}, inflight: map[string]*inflight{}, caSubs: map[string]bool{},
		issuers: map[string]*issuerCache{}, present: map[string]bool{},
		outbox: make(chan outMsg, 256),
	}
	d.fleet = newFleet(opts.DeviceID, opts.FleetWindow, opts.EpochFile)
	d.verifier.Store(opts.Verifier)
	return d
}

// SetVerifier replaces the controllers' verifier (nil: signed requests are no longer
// required). Messages being checked finish with the one they started with.
func (d *Device) SetVerifier(v *auth.Verifier) {
	d.verifier.Store(v)
}

// DefaultDeviceID derives a stable id from the machine id, so a re-flashed appliance
// with the same machine id keeps its topics.
func DefaultDeviceID() string {
	for _, f := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		if b, err := os.ReadFile(f); err == nil && len(strings.TrimSpace(string(b))) > 0 {
			sum := sha256.Sum256([]byte("iot-hsm:" + strings.TrimSpace(string(b))))
			return "ihsm-" + hex.EncodeToString(sum[:3])
		}
	}
	h, _ := os.Hostname()
	return "ihsm-" + strings.ToLower(h)
}

// Topics returns the device's topics.
func (d *Device) Topics() protocol.Topics { return d.topics }

// Start subscribes the command topics and the CA topics of provisioned slots, and
// starts the workers, the outbox and the presence watch. It returns at once.
func (d *Device) Start(ctx context.Context, tr Transport) error {
	d.tr = tr
	d.started = d.opts.Now().UTC()
	d.ctx, d.cancel = context.WithCancel(ctx)
	d.wg.Add(3)
	go d.runOutbox()
	go d.watch()
	go d.runClaims()
	// Requests the last stop interrupted reach the audit trail, and lost replies are
	// marked, before any redelivery can arrive.
	(&recovery.Recovery{Store: d.store, Audit: d.opts.Audit, Now: d.opts.Now, Retention: d.opts.ReplyRetention}).Run()
	if err := tr.Subscribe(d.topics.CmdFilter(), d.Handle); err != nil {
		return err
	}
	d.syncSubscriptions()
	d.notePresence() // the presence events that follow are changes from this
	d.pruneReplies()
	return nil
}

// Stop stops taking requests and waits for the workers to finish what they run.
func (d *Device) Stop() {
	if d.cancel == nil {
		return
	}
	d.cancel()
	d.mu.Lock()
	for _, w := range d.workers {
		close(w.queue)
	}
	d.workers = map[string]*worker{}
	d.mu.Unlock()
	d.wg.Wait()
	d.flushRefusals()
}

// Connected is called by the transport after every (re)connect: the retained status
// is republished there.
func (d *Device) Connected() {
	d.syncSubscriptions()
	if d.opts.Fleet && d.opts.CATransport == nil {
		d.FleetConnected()
	}
	d.flushUnsent()
	d.PublishStatus()
	d.publishTakeover()
}

func (d *Device) runOutbox() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case m := <-d.outbox:
			d.publish(m)
		}
	}
}

func (d *Device) publish(m outMsg) {
	if d.deliverLocal(m.topic, m.payload) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.tr.Publish(ctx, m.topic, m.payload, m.retained); err != nil {
		d.keepUnsent(m, err)
	}
}

// send queues a message for the outbox without blocking the caller; when the outbox
// is full the message is dropped and counted.
func (d *Device) send(topic string, payload []byte, retained bool) {
	select {
	case d.outbox <- outMsg{topic, payload, retained}:
	default:
		d.dropped.Add(1)
		slog.Warn("outbox full, message dropped", "topic", topic)
	}
}
