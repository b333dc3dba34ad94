package daemontest

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// The fleet test's PKI: requests on a CA topic, each sent again under the same id
// (the same payload, expires_at included) every retry interval until a final answer
// comes or it expires.

const fleetRetry = 3 * time.Second

// fleetReq is one request and what became of it.
type fleetReq struct {
	id         string
	payload    []byte
	expires    time.Time
	first      time.Time // first publish
	firstReply time.Time // first reply of any kind
	sends      int
}

type fleetLoad struct {
	c     *mqtttest.Client
	topic string
	args  json.RawMessage
	lead  time.Duration // how far ahead of its first send a request expires
	reqs  []*fleetReq
	done  atomic.Int32
	mu    sync.Mutex // guards the times and sends of reqs
}

// final: a certificate, or an answer that says no certificate will come for the id.
func final(reps []protocol.Reply) bool {
	for _, r := range reps {
		if r.OK {
			return true
		}
		switch {
		case r.Error.Code == protocol.CodeExpired:
			return true
		case r.Error.Code == protocol.CodeClaimed && r.Error.Details["claims_lost"] == true:
			return true
		}
	}
	return false
}

// run sends the requests, inflight at a time.
func (l *fleetLoad) run(inflight int) {
	next := make(chan *fleetReq)
	var wg sync.WaitGroup
	for range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range next {
				l.one(r)
				l.done.Add(1)
			}
		}()
	}
	for _, r := range l.reqs {
		next <- r
	}
	close(next)
	wg.Wait()
}

func (l *fleetLoad) one(r *fleetReq) {
	exp := time.Now().Add(l.lead).UTC()
	r.payload, _ = json.Marshal(protocol.Request{ID: r.id, ReplyTo: l.c.ReplyTo, ExpiresAt: &exp, Args: l.args})
	r.expires = exp
	for time.Now().Before(r.expires) {
		for l.c.Send(l.topic, r.payload) != nil { // the broker is away: again
			if time.Now().After(r.expires) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		l.mu.Lock()
		if r.first.IsZero() {
			r.first = time.Now()
		}
		r.sends++
		l.mu.Unlock()
		sent := time.Now()
		for time.Since(sent) < fleetRetry {
			n := len(l.c.Raw(r.id))
			if _, ok := l.c.Reply(r.id, n+1, fleetRetry-time.Since(sent)); !ok {
				break
			}
			l.mu.Lock()
			if r.firstReply.IsZero() {
				r.firstReply = time.Now()
			}
			l.mu.Unlock()
			if final(l.c.Replies(r.id)) {
				return
			}
		}
	}
}

// newFleetLoad makes n sign requests of args for topic, each expiring lead after it
// is first sent.
func newFleetLoad(c *mqtttest.Client, topic string, n int, args protocol.SignArgs, lead time.Duration) *fleetLoad {
	raw, _ := json.Marshal(args)
	l := &fleetLoad{c: c, topic: topic, args: raw, lead: lead}
	for range n {
		l.reqs = append(l.reqs, &fleetReq{id: mqtttest.RandomID()})
	}
	return l
}
