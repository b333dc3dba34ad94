package mqtttest

import (
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Inbox keeps what a subscription receives, by topic; its Handle is an
// mqtt.Handler. The zero Inbox is ready to use.
type Inbox struct {
	mu      sync.Mutex
	got     map[string][][]byte
	arrived chan struct{} // closed and replaced at every arrival
}

// Handle keeps one message.
func (in *Inbox) Handle(topic string, payload []byte) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.got == nil {
		in.got = map[string][][]byte{}
	}
	in.got[topic] = append(in.got[topic], append([]byte(nil), payload...))
	if in.arrived != nil {
		close(in.arrived)
		in.arrived = nil
	}
}

// Messages is what arrived on topic so far, oldest first.
func (in *Inbox) Messages(topic string) [][]byte {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([][]byte(nil), in.got[topic]...)
}

// Last is the newest message on topic, or nil.
func (in *Inbox) Last(topic string) []byte {
	m := in.Messages(topic)
	if len(m) == 0 {
		return nil
	}
	return m[len(m)-1]
}

// All is everything so far, by topic.
func (in *Inbox) All() map[string][][]byte {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make(map[string][][]byte, len(in.got))
	for k, v := range in.got {
		out[k] = append([][]byte(nil), v...)
	}
	return out
}

// Topics are the topics anything arrived on, sorted.
func (in *Inbox) Topics() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []string
	for k := range in.got {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Has tells whether a message containing substr arrived on topic (any message when
// substr is empty).
func (in *Inbox) Has(topic, substr string) bool {
	for _, p := range in.Messages(topic) {
		if strings.Contains(string(p), substr) {
			return true
		}
	}
	return false
}

// WaitFor fails the test unless a message containing substr arrives on topic
// within 10s.
func (in *Inbox) WaitFor(t testing.TB, topic, substr string) {
	t.Helper()
	if !in.Wait(10*time.Second, func() bool { return in.Has(topic, substr) }) {
		t.Fatalf("%q never arrived on %s", substr, topic)
	}
}

// Wait waits up to timeout for cond, checking it again at every arrival.
func (in *Inbox) Wait(timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		in.mu.Lock()
		if in.arrived == nil {
			in.arrived = make(chan struct{})
		}
		arrived := in.arrived
		in.mu.Unlock()
		if cond() {
			return true
		}
		select {
		case <-arrived:
		case <-deadline.C:
			return cond()
		}
	}
}
