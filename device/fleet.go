package device

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// A request taken from a CA topic is signed only after this member's claim on its id
// came back from the broker with no other member's claim on that id before it. The
// broker delivers the claims to every member in one order, so every member decides
// alike: the first claim wins, and an id is never signed by two members (fleet.md).

// claimWait bounds how long a request waits for its claim to come back.
const claimWait = 10 * time.Second

// pendingClaim is a request whose claim is published and not yet decided.
type pendingClaim struct {
	j      *job
	hsmID  string
	nonce  string
	since  time.Time
	echoed bool     // the claim came back; the decision waits for the epoch
	dupsTo []string // reply topics of redeliveries meanwhile
}

// otherClaim is another member's claim on an id.
type otherClaim struct {
	member  string
	expires time.Time
}

// fleet is this member's view of the claims on the CA topics it serves.
type fleet struct {
	mu     sync.Mutex
	member string
	window time.Duration
	queue  chan *pendingClaim
	mine   map[string]*pendingClaim // by ca_id/id
	others map[string][]otherClaim  // by ca_id/id
	own    map[string]time.Time     // own retained claims, cleared after they expire
	epochs map[string]*epochState   // by ca_id
	known  map[string]protocol.Epoch
	file   string // where known is kept; empty: in memory only
}

func newFleet(member string, window time.Duration, file string) *fleet {
	f := &fleet{member: member, window: window, queue: make(chan *pendingClaim, 1024),
		mine: map[string]*pendingClaim{}, others: map[string][]otherClaim{}, own: map[string]time.Time{},
		epochs: map[string]*epochState{}, file: file}
	f.known = loadEpochs(file)
	return f
}

func claimKey(caID, id string) string { return caID + "/" + id }

func nonce() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// caTransport is the session the CA topics and the claims travel on.
func (d *Device) caTransport() Transport {
	if d.opts.CATransport != nil {
		return d.opts.CATransport
	}
	return d.tr
}

// admit queues a request for its token; one from a CA topic after its claim.
func (d *Device) admit(hsmID string, j *job) {
	if j.caID == "" || !d.opts.Fleet {
		d.enqueue(hsmID, j)
		return
	}
	if e := d.checkCAExpiry(j.req); e != nil {
		d.replyNow(j.req, j.cmd, e)
		return
	}
	d.claimThenEnqueue(hsmID, j)
}

// checkCAExpiry: a request on a CA topic must say when it expires, within the claim
// window, so that its claim, and the time a retry may come, are bounded.
func (d *Device) checkCAExpiry(req protocol.Request) *protocol.Error {
	now := d.opts.Now()
	if req.ExpiresAt == nil || req.ExpiresAt.After(now.Add(d.fleet.window)) {
		return protocol.Errorf(protocol.CodeBadRequest,
			"a request on a CA topic must carry expires_at no more than %v ahead of this appliance's clock, which reads %s",
			d.fleet.window, now.UTC().Format(time.RFC3339))
	}
	return nil
}

// claimThenEnqueue queues a request from a CA topic for its claim, unless another
// member holds the id already.
func (d *Device) claimThenEnqueue(hsmID string, j *job) {
	f := d.fleet
	key := claimKey(j.caID, j.req.ID)
	f.mu.Lock()
	if p := f.mine[key]; p != nil { // a redelivery while the claim is out
		same := bytes.Equal(p.j.fp, j.fp)
		if t := d.replyTopic(j.req); same && t != d.replyTopic(p.j.req) && len(p.dupsTo) < maxDups {
			p.dupsTo = append(p.dupsTo, t)
		}
		f.mu.Unlock()
		if !same {
			d.replyNow(j.req, j.cmd, protocol.Errorf(protocol.CodeConflict, "id %s is in use by another request", j.req.ID))
		}
		return
	}
	other, taken := f.takenBy(key, d.opts.Now())
	p := &pendingClaim{j: j, hsmID: hsmID, since: d.opts.Now()}
	if !taken {
		f.mine[key] = p
	}
	f.mu.Unlock()
	switch {
	case taken:
		d.replyNow(j.req, j.cmd, claimedBy(other))
	case !d.caTransport().Connected():
		d.dropClaim(key, protocol.Errorf(protocol.CodeBusy, "not connected to the broker; retry with the same id"))
	default:
		select {
		case f.queue <- p:
		default:
			d.dropClaim(key, protocol.Errorf(protocol.CodeBusy, "too many requests wait for their claim; retry with the same id"))
		}
	}
}

// takenBy returns an unexpired claim of another member on key; f.mu held.
func (f *fleet) takenBy(key string, now time.Time) (otherClaim, bool) {
	for _, c := range f.others[key] {
		if c.expires.After(now) {
			return c, true
		}
	}
	return otherClaim{}, false
}

func claimedBy(c otherClaim) *protocol.Error {
	e := protocol.Errorf(protocol.CodeClaimed,
		"another appliance of the fleet (%s) took this request; its reply comes from there and it is never signed here", c.member)
	e.Details = map[string]any{"claimed_by": c.member, "claim_expires_at": c.expires.UTC().Format(time.RFC3339)}
	return e
}

func claimsLost() *protocol.Error {
	e := protocol.Errorf(protocol.CodeClaimed,
		"the broker lost the fleet's claims (restarted without its state): a request that may have been sent before that is not signed here; send a new request with a new id")
	e.Details = map[string]any{"claims_lost": true}
	return e
}

// dropClaim answers a request whose claim is given up, to it and its redeliveries.
func (d *Device) dropClaim(key string, e *protocol.Error) {
	f := d.fleet
	f.mu.Lock()
	p := f.mine[key]
	delete(f.mine, key)
	f.mu.Unlock()
	if p != nil {
		d.answerClaim(p, e)
	}
}

// answerClaim answers a request that is not signed here, and its redeliveries.
func (d *Device) answerClaim(p *pendingClaim, e *protocol.Error) {
	d.replyNow(p.j.req, p.j.cmd, e)
	out, _ := json.Marshal(protocol.Reply{ID: p.j.req.ID, Cmd: p.j.cmd, Error: e, Replayed: true})
	for _, t := range p.dupsTo {
		d.send(t, out, false)
	}
}

// runClaims publishes the claims of queued requests, gives up those the broker does
// not echo in time, and clears this member's expired claims from the broker.
func (d *Device) runClaims() {
	defer d.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case p := <-d.fleet.queue:
			d.publishClaim(p)
		case <-tick.C:
			d.sweepClaims()
		}
	}
}

func (d *Device) publishClaim(p *pendingClaim) {
	f := d.fleet
	n := nonce()
	f.mu.Lock()
	p.nonce = n
	f.mu.Unlock()
	payload, _ := json.Marshal(protocol.Claim{ExpiresAt: p.j.req.ExpiresAt.UTC(), Nonce: n})
	d.publishCA(d.topics.CAClaim(p.j.caID, f.member, p.j.req.ID), payload, true)
}

// publishCA puts a message in flight on the CA session without waiting for it: the
// claim's echo, not the PUBACK, is what counts.
func (d *Device) publishCA(topic string, payload []byte, retained bool) {
	tr := d.caTransport()
	if ap, ok := tr.(asyncPublisher); ok {
		wait := ap.PublishAsync(topic, payload, retained)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), claimWait)
			defer cancel()
			if err := wait(ctx); err != nil {
				slog.Warn("fleet message not published", "topic", topic, "err", err)
			}
		}()
		return
	}
	go d.publish(outMsg{topic: topic, payload: payload, retained: retained})
}

// sweepClaims gives up claims the broker did not echo within claimWait, clears this
// member's claims whose request expired, and forgets others' expired claims.
func (d *Device) sweepClaims() {
	f := d.fleet
	now := d.opts.Now()
	var late, clear []string
	f.mu.Lock()
	for key, p := range f.mine {
		if p.nonce != "" && now.Sub(p.since) > claimWait {
			late = append(late, key)
		}
	}
	for key, exp := range f.own {
		if !exp.After(now) {
			clear = append(clear, key)
			delete(f.own, key)
		}
	}
	for key := range f.others {
		if _, taken := f.takenBy(key, now); !taken {
			delete(f.others, key)
		}
	}
	f.mu.Unlock()
	for _, key := range late {
		d.dropClaim(key, protocol.Errorf(protocol.CodeBusy, "the broker did not confirm this appliance's claim on the request; retry with the same id"))
	}
	for _, key := range clear {
		d.clearClaim(key)
	}
}

// clearClaim removes this member's retained claim on key from the broker.
func (d *Device) clearClaim(key string) {
	caID, id, _ := strings.Cut(key, "/")
	d.publishCA(d.topics.CAClaim(caID, d.fleet.member, id), nil, true)
}
