package console

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// discoveryWait is how long retained status is collected when no device is named.
// Retained messages arrive right after the subscription, so a second is plenty on
// any broker that answers at all.
const discoveryWait = time.Second

// seenDevice is a device known through its retained status.
type seenDevice struct {
	id     string // the topic level, which is what commands address
	status protocol.Status
	raw    json.RawMessage
}

// topicDevice returns the device level of <root>/<dev>/<suffix>.
func topicDevice(root, topic, suffix string) (string, bool) {
	rest, ok := strings.CutPrefix(topic, root+"/")
	if !ok {
		return "", false
	}
	dev, ok := strings.CutSuffix(rest, "/"+suffix)
	return dev, ok && mqtt.ValidTopicLevel(dev)
}

// statuses collects the retained status documents under the root for wait; with
// synced it returns as soon as the broker has handed them all out, wait being then
// only the upper bound.
func (s *session) statuses(cn *conn, wait time.Duration, synced bool) ([]seenDevice, error) {
	var mu sync.Mutex
	seen := map[string]seenDevice{}
	filter := protocol.StatusFilter(s.opts.root)
	err := cn.client.Subscribe(filter, func(topic string, payload []byte) {
		dev, ok := topicDevice(s.opts.root, topic, "status")
		if !ok {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if len(payload) == 0 {
			delete(seen, dev) // a cleared retained status: the device was retired
			return
		}
		d := seenDevice{id: dev, raw: json.RawMessage(payload)}
		if json.Unmarshal(payload, &d.status) != nil {
			d.raw, _ = json.Marshal(string(payload))
		}
		seen[dev] = d
	})
	if err != nil {
		return nil, unreachablef("subscribe to %s: %v", filter, err)
	}
	if synced {
		s.syncRetained(cn, wait)
	} else {
		time.Sleep(wait)
	}
	// Nothing more is wanted from it; an error here changes nothing for the caller.
	_ = cn.client.Unsubscribe(filter)

	mu.Lock()
	defer mu.Unlock()
	out := make([]seenDevice, 0, len(seen))
	for _, d := range seen {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out, nil
}

// resolveDevice returns --device, or the one device online when none is named.
// Picking one of several would send a signing or provisioning command to an
// appliance the operator did not mean, so anything but exactly one is refused.
func (s *session) resolveDevice(cn *conn) (string, error) {
	if s.opts.device != "" {
		return s.opts.device, nil
	}
	seen, err := s.retained(cn)
	if err != nil {
		return "", err
	}
	var online, offline []string
	for _, d := range seen {
		if d.status.Online {
			online = append(online, d.id)
		} else {
			offline = append(offline, d.id)
		}
	}
	if len(online) == 1 {
		fmt.Fprintf(s.stderr, "device: %s (the only one online)\n", online[0])
		return online[0], nil
	}
	var b strings.Builder
	if len(online) == 0 {
		fmt.Fprintf(&b, "no device online under %s within %s", protocol.StatusFilter(s.opts.root), discoveryWait)
	} else {
		fmt.Fprintf(&b, "%d devices online (%s)", len(online), strings.Join(online, ", "))
	}
	if len(offline) > 0 {
		fmt.Fprintf(&b, ", offline: %s", strings.Join(offline, ", "))
	}
	b.WriteString("; name one with --device or IOT_HSM_DEVICE")
	return "", usagef("%s", b.String())
}

func (s *session) cmdDevices(args []string) error {
	fs := s.flags("devices", "[--wait D]")
	wait := fs.Duration("wait", discoveryWait, "how long to collect retained status")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if *wait <= 0 {
		return usagef("--wait must be positive")
	}
	cn, err := s.connect()
	if err != nil {
		return err
	}
	defer cn.close()
	seen, err := s.statuses(cn, *wait, false)
	if err != nil {
		return err
	}
	if s.opts.json {
		byID := make(map[string]json.RawMessage, len(seen))
		for _, d := range seen {
			byID[d.id] = d.raw
		}
		out, _ := json.Marshal(byID)
		printIndented(s.stdout, out)
		return nil
	}
	printDevices(s.stdout, seen)
	return nil
}

// watchMsg is one message for watch.
type watchMsg struct {
	topic   string
	payload []byte
}

func (s *session) cmdWatch(args []string) error {
	fs := s.flags("watch", "[--all] [--count N] [--for D]")
	all := fs.Bool("all", false, "every device under the root, not one")
	count := fs.Int("count", 0, "stop after `N` messages (0: no limit)")
	dur := fs.Duration("for", 0, "stop after this long (0: until interrupted)")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if *count < 0 || *dur < 0 {
		return usagef("--count and --for must not be negative")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}

	cn, err := s.connect()
	if err != nil {
		return err
	}
	defer cn.close()
	root := s.opts.root
	filters := []string{root + "/+/status", root + "/+/events"}
	if !*all {
		dev, err := s.resolveDevice(cn)
		if err != nil {
			return err
		}
		t := protocol.Topics{Root: root, Device: dev}
		filters = []string{t.Status(), t.Events()}
	}

	// The handler may not block, so a console that cannot keep up loses messages
	// and says how many instead of stalling the connection.
	msgs := make(chan watchMsg, 256)
	var lost sync.Mutex
	dropped := 0
	handler := func(topic string, payload []byte) {
		select {
		case msgs <- watchMsg{topic, payload}:
		default:
			lost.Lock()
			dropped++
			lost.Unlock()
		}
	}
	for _, f := range filters {
		if err := cn.client.Subscribe(f, handler); err != nil {
			return unreachablef("subscribe to %s: %v", f, err)
		}
	}

loop:
	for n := 0; *count == 0 || n < *count; n++ {
		select {
		case m := <-msgs:
			s.printWatch(m)
		case <-ctx.Done():
			break loop
		}
	}
	lost.Lock()
	defer lost.Unlock()
	if dropped > 0 {
		fmt.Fprintf(s.stderr, "watch: %d messages dropped (output too slow)\n", dropped)
	}
	return nil
}

// printWatch prints one message on one line.
func (s *session) printWatch(m watchMsg) {
	root := s.opts.root
	if s.opts.json {
		payload := json.RawMessage(m.payload)
		if !json.Valid(m.payload) {
			payload, _ = json.Marshal(string(m.payload))
		}
		line, _ := json.Marshal(struct {
			Topic   string          `json:"topic"`
			Payload json.RawMessage `json:"payload"`
		}{m.topic, payload})
		fmt.Fprintf(s.stdout, "%s\n", line)
		return
	}
	if dev, ok := topicDevice(root, m.topic, "status"); ok {
		var st protocol.Status
		if err := json.Unmarshal(m.payload, &st); err != nil {
			fmt.Fprintf(s.stdout, "%s %s status (unreadable: %v)\n", now(), dev, err)
			return
		}
		fmt.Fprintf(s.stdout, "%s %s status %s\n", stamp(st.Time), dev, statusLine(st))
		return
	}
	if dev, ok := topicDevice(root, m.topic, "events"); ok {
		var ev protocol.Event
		if err := json.Unmarshal(m.payload, &ev); err != nil {
			fmt.Fprintf(s.stdout, "%s %s event (unreadable: %v)\n", now(), dev, err)
			return
		}
		fmt.Fprintf(s.stdout, "%s %s event %s\n", stamp(ev.Time), dev, eventLine(ev))
		return
	}
	fmt.Fprintf(s.stdout, "%s %s (%d bytes)\n", now(), m.topic, len(m.payload))
}

func now() string { return time.Now().UTC().Format(time.RFC3339) }

// stamp is the message's own time, or the arrival time when it has none.
func stamp(t time.Time) string {
	if t.IsZero() {
		return now()
	}
	return t.UTC().Format(time.RFC3339)
}
