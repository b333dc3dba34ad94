package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// sse is one server-sent event.
type sse struct {
	name string
	data string
}

// hub fans the device's status changes and events out to the open pages. A page
// that falls behind misses events, not the latest state: each client keeps a small
// buffer, and the newest status is always sent again on the next change.
type hub struct {
	mu      sync.Mutex
	clients map[chan sse]bool
	closed  bool
	done    chan struct{}
}

func newHub() *hub { return &hub{clients: map[chan sse]bool{}, done: make(chan struct{})} }

func (h *hub) subscribe() chan sse {
	ch := make(chan sse, 16)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(ch)
		return ch
	}
	h.clients[ch] = true
	return ch
}

func (h *hub) unsubscribe(ch chan sse) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.clients[ch] {
		delete(h.clients, ch)
		close(ch)
	}
}

func (h *hub) broadcast(events ...sse) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.clients {
		for _, e := range events {
			select {
			case ch <- e:
			default:
			}
		}
	}
}

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	close(h.done)
	for ch := range h.clients {
		delete(h.clients, ch)
		close(ch)
	}
}

// StatusChanged renders a new status for the open pages; it does not block.
func (s *Server) StatusChanged(st protocol.Status) {
	s.hub.broadcast(s.statusEvents(st)...)
}

func (s *Server) statusEvents(st protocol.Status) []sse {
	var buf bytes.Buffer
	if err := fragment.ExecuteTemplate(&buf, "live", s.live(st)); err != nil {
		slog.Error("rendering the live status", "err", err)
		return nil
	}
	return []sse{{"status", buf.String()}, {"count", countText(st)}}
}

// Event passes a message of the events topic to the open pages; an update's
// progress moves the progress bar.
func (s *Server) Event(payload []byte) {
	var e struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(payload, &e) != nil || e.Type != "ota" {
		return
	}
	s.hub.broadcast(sse{"ota", string(payload)})
}

func countText(st protocol.Status) string {
	return fmt.Sprintf("%d/%d slots connected", st.ConnectedSlots, st.SlotsTotal)
}

// keepAlive is shorter than the idle timeouts of the proxies and phones in between.
const keepAlive = 25 * time.Second

func (s *Server) events(w http.ResponseWriter, r *http.Request, _ *session) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	ch := s.hub.subscribe()
	defer s.hub.unsubscribe(ch)
	fmt.Fprint(w, "retry: 2000\n\n")
	if d := s.device(); d != nil {
		for _, e := range s.statusEvents(d.Status()) {
			writeSSE(w, e)
		}
	}
	fl.Flush()
	t := time.NewTicker(keepAlive)
	defer t.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case e, ok := <-ch:
			if !ok {
				return
			}
			writeSSE(w, e)
		case <-t.C:
			// A session that expired ends its stream too.
			if !s.sessions.alive(r) {
				return
			}
			fmt.Fprint(w, ": keep-alive\n\n")
		}
		fl.Flush()
	}
}

func writeSSE(w http.ResponseWriter, e sse) {
	fmt.Fprintf(w, "event: %s\n", e.name)
	for _, line := range strings.Split(e.data, "\n") {
		fmt.Fprintf(w, "data: %s\n", line)
	}
	fmt.Fprint(w, "\n")
}
