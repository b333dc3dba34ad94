package device

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/auth"
	"github.com/iot-hsm/iot-hsm/device/recovery"
	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// job is one accepted request on its way through a worker.
type job struct {
	cmd      string
	req      protocol.Request
	fp       []byte
	caID     string // from the CA signing topic
	slotID   string // resolved target slot, when there is one
	run      handler
	deadline time.Duration

	requester string       // who signed the request, when requests are signed
	rec       audit.Record // what the handler did, for the audit trail
	intent    bool         // an intent was stored before it ran (journaled)
	// check, when set, must pass before the result leaves: the verification of a
	// signature, run by the finisher so the token signs the next request meanwhile.
	check func() error
}

type handler func(ctx context.Context, j *job) (any, error)

// inflight is a request being worked on. Redeliveries that arrive meanwhile are not
// run again; they get the reply, marked replayed, when it is ready.
type inflight struct {
	fp     []byte
	dupsTo []string // reply topics of redeliveries, each once
}

// maxDups bounds the reply topics kept per request in flight: redeliveries with
// ever new reply_to topics must not grow memory without bound.
const maxDups = 8

// addDup keeps topic for the reply of a redelivery; false when the bound is reached.
func (f *inflight) addDup(topic string) bool {
	if slices.Contains(f.dupsTo, topic) {
		return true
	}
	if len(f.dupsTo) >= maxDups {
		return false
	}
	f.dupsTo = append(f.dupsTo, topic)
	return true
}

type worker struct {
	id     string
	queue  chan *job
	live   liveness // the job running now, for the watchdog
	finish chan finished
	load   atomic.Int32 // jobs queued or running, to spread a CA over its tokens
}

// finished is a job whose token work is done and whose reply is still to be
// recorded, cached and published.
type finished struct {
	j   *job
	rep protocol.Reply
}

// Handle takes one message from the transport. It never blocks: it decodes, answers
// what can be answered at once (malformed, expired, replayed, busy) through the
// outbox, and queues the rest on the worker of the token the command needs.
func (d *Device) Handle(topic string, payload []byte) {
	if d.ctx == nil || d.ctx.Err() != nil {
		return
	}
	d.requests.Add(1)
	cmd, caID := "", ""
	if c, ok := d.topics.ParseCmdTopic(topic); ok {
		cmd = c
	} else if id, ok := d.topics.ParseCASignTopic(topic); ok {
		cmd, caID = protocol.CmdSign, id
	} else {
		d.dropped.Add(1)
		return
	}
	verifier := d.verifier.Load()
	payload, requester, perr := d.authenticate(verifier, topic, payload)
	if perr != nil {
		// Answer where the request asked, though nothing in it can be trusted: the
		// refusal itself carries nothing.
		inner := payload
		if auth.IsJWS(payload) {
			inner = auth.PeekPayload(payload)
		}
		req, _ := protocol.DecodeRequest(inner)
		d.refuse(req, cmd, requester, perr)
		return
	}
	req, perr := protocol.DecodeRequest(payload)
	if perr != nil {
		if req.ID == "" {
			d.dropped.Add(1)
			slog.Debug("message without a readable id dropped", "topic", topic)
			return
		}
		d.replyNow(req, cmd, perr)
		return
	}
	if verifier != nil && req.ExpiresAt == nil {
		d.refuse(req, cmd, requester, protocol.Errorf(protocol.CodeUnauthorized, "a signed request must carry expires_at"))
		return
	}
	// The reply cache is what stops a signed request from running twice; a request
	// that outlives it could be replayed once its reply is pruned.
	if verifier != nil && req.ExpiresAt.After(d.opts.Now().Add(d.opts.ReplyRetention)) {
		// The device's clock is named: a Pi without a battery-backed clock and
		// without NTP may be days behind, and then this is where it shows.
		d.refuse(req, cmd, requester, protocol.Errorf(protocol.CodeUnauthorized,
			"a signed request must expire within %v of this appliance's clock, which reads %s (replies are kept that long against replays)",
			d.opts.ReplyRetention, d.opts.Now().UTC().Format(time.RFC3339)))
		return
	}
	d.intake(cmd, caID, req, requester)
}

// intake takes an authenticated, decoded request through the reply cache, the
// expiry and the command table onto its worker. MQTT requests (Handle) and local
// ones (Exec) share it.
func (d *Device) intake(cmd, caID string, req protocol.Request, requester string) {
	// A repeat gets the stored reply even after its expires_at: nothing runs, and a
	// requester that lost the first reply still learns the outcome.
	fp := protocol.Fingerprint(cmd, req.Args)
	if d.replayed(req, cmd, fp) {
		return
	}
	if d.expired(req) {
		d.refuse(req, cmd, requester, protocol.Errorf(protocol.CodeExpired, "request expired at %s", req.ExpiresAt.UTC().Format(time.RFC3339)))
		return
	}
	j := &job{cmd: cmd, req: req, fp: fp, caID: caID, deadline: defaultDeadline, requester: requester}
	hsmID, perr := d.route(j)
	if perr != nil {
		d.replyNow(req, cmd, perr)
		return
	}
	wedgeForTest(j)
	d.admit(hsmID, j)
}

// authenticate unwraps a signed request. With a controllers bundle configured only
// signed requests chaining to it pass; without one, a signed request is taken after
// its signature is checked against its own certificate.
func (d *Device) authenticate(verifier *auth.Verifier, topic string, payload []byte) ([]byte, string, *protocol.Error) {
	if len(payload) > 2*protocol.MaxPayload {
		return payload, "", nil // DecodeRequest refuses it as oversize
	}
	jws := auth.IsJWS(payload)
	switch {
	case verifier != nil && !jws:
		return payload, "", protocol.Errorf(protocol.CodeUnauthorized, "this appliance takes only signed requests (compact JWS)")
	case verifier != nil:
		inner, who, err := verifier.Verify(payload, topic)
		if err != nil {
			return payload, "", protocol.Errorf(protocol.CodeUnauthorized, "%v", err)
		}
		return inner, who, nil
	case jws:
		inner, who, err := auth.Unwrap(payload, topic)
		if err != nil {
			return payload, "", protocol.Errorf(protocol.CodeUnauthorized, "%v", err)
		}
		return inner, who, nil
	}
	return payload, "", nil
}

// refuse answers a request that is not run, and records the refusal in the audit
// trail: a forged or stale request is something an auditor wants to see. A flood of
// them is sampled (refusals.go).
func (d *Device) refuse(req protocol.Request, cmd, requester string, e *protocol.Error) {
	d.refusedCount.Add(1)
	d.noteRefusal(audit.Record{RequestID: req.ID, Requester: requester, Command: cmd, Result: e.Code})
	if req.ID == "" {
		d.dropped.Add(1)
		return
	}
	d.replyNow(req, cmd, e)
}

func (d *Device) expired(req protocol.Request) bool {
	return req.ExpiresAt != nil && !d.opts.Now().Before(*req.ExpiresAt)
}

// replayed answers a request whose id was seen before: the stored reply again, or
// conflict when the content differs. A request still in flight is not run twice; its
// reply goes out when it finishes.
func (d *Device) replayed(req protocol.Request, cmd string, fp []byte) bool {
	d.mu.Lock()
	if f, ok := d.inflight[req.ID]; ok {
		same := bytes.Equal(f.fp, fp)
		kept := same && f.addDup(d.replyTopic(req))
		d.mu.Unlock()
		switch {
		case !same:
			d.replyNow(req, cmd, protocol.Errorf(protocol.CodeConflict, "id %s is in use by another request", req.ID))
		case !kept:
			d.replyNow(req, cmd, protocol.Errorf(protocol.CodeBusy, "id %s is still running and has %d redeliveries waiting; retry later", req.ID, maxDups))
		}
		return true
	}
	d.mu.Unlock()
	stored, err := d.store.Reply(req.ID)
	if errors.Is(err, store.ErrNotFound) {
		return false
	}
	if err != nil {
		slog.Error("reading the reply cache", "err", err)
		return false
	}
	if e, lost := recovery.LostReply(stored); lost {
		// Marked replayed: it answers from what was stored; nothing runs.
		out, _ := json.Marshal(protocol.Reply{ID: req.ID, Cmd: cmd, Error: e, Replayed: true})
		d.send(d.replyTopic(req), out, false)
		return true
	}
	// A reply cached before fingerprints left secrets out has lost its fingerprint:
	// the id alone decides, and the stored reply is the answer.
	if !bytes.Equal(stored.Digest, fp) && !bytes.Equal(stored.Digest, store.LegacyDigest) {
		d.replyNow(req, cmd, protocol.Errorf(protocol.CodeConflict, "id %s was used for another request", req.ID))
		return true
	}
	var rep protocol.Reply
	if json.Unmarshal(stored.Payload, &rep) != nil {
		return false
	}
	rep.Replayed = true
	out, _ := json.Marshal(rep)
	d.send(d.replyTopic(req), out, false)
	return true
}

func (d *Device) replyTopic(req protocol.Request) string {
	if req.ReplyTo != "" {
		return req.ReplyTo
	}
	return d.topics.Reply()
}

// replyNow answers without running anything (and without caching: nothing was done,
// so a retry may run).
func (d *Device) replyNow(req protocol.Request, cmd string, e *protocol.Error) {
	d.errors.Add(1)
	out, _ := json.Marshal(protocol.Reply{ID: req.ID, Cmd: cmd, Error: e})
	d.send(d.replyTopic(req), out, false)
}

// enqueue puts the job on its token's worker, or answers busy when the queue is full.
func (d *Device) enqueue(hsmID string, j *job) {
	d.mu.Lock()
	if d.ctx.Err() != nil {
		d.mu.Unlock()
		return
	}
	w, ok := d.workers[hsmID]
	if !ok {
		w = &worker{id: hsmID, queue: make(chan *job, d.opts.QueueSize), finish: make(chan finished, d.opts.QueueSize)}
		d.workers[hsmID] = w
		d.wg.Add(1)
		go d.runWorker(w)
	}
	select {
	case w.queue <- j:
		w.load.Add(1)
		d.inflight[j.req.ID] = &inflight{fp: j.fp}
		d.mu.Unlock()
	default:
		d.mu.Unlock()
		d.replyNow(j.req, j.cmd, protocol.Errorf(protocol.CodeBusy, "the queue of %s is full; retry later", nameOr(hsmID, "the device")))
	}
}

func nameOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// runWorker runs one token's jobs, one at a time: PIV cards and PKCS#11 sessions are
// not safe for concurrent use, and a token is as fast serial as it is parallel.
func (d *Device) runWorker(w *worker) {
	defer d.wg.Done()
	// The token signs the next request while the finisher syncs the last replies
	// to disk and publishes them: token and disk work overlap, and a burst of
	// replies shares one sync.
	finisher := make(chan struct{})
	go func() {
		d.runFinisher(w.finish)
		close(finisher)
	}()
	for j := range w.queue {
		w.live.begin(j)
		if rep, ok := d.runJob(j); ok {
			w.finish <- finished{j, rep}
		}
		w.live.end()
		w.load.Add(-1)
	}
	close(w.finish)
	<-finisher
}

// runJob runs one job on the token and returns its reply, or false when the job was
// answered without running.
func (d *Device) runJob(j *job) (protocol.Reply, bool) {
	if d.ctx.Err() != nil {
		d.refuseStopping(j) // queued when the shutdown began: answered, not run
		return protocol.Reply{}, false
	}
	// A request that waited in the queue past its expiry is stale: not run.
	if d.expired(j.req) {
		d.done(j)
		d.replyNow(j.req, j.cmd, protocol.Errorf(protocol.CodeExpired, "request expired while queued"))
		return protocol.Reply{}, false
	}
	if journaled(j.cmd) {
		in := store.Intent{Command: j.cmd, SlotID: j.slotID, Requester: j.requester, Started: d.opts.Now().UTC()}
		if d.opts.Audit != nil {
			in.AuditSeq = d.opts.Audit.Head().Seq
		}
		if err := d.store.PutIntent(j.req.ID, in); err != nil {
			slog.Error("state store not writable; request not run", "cmd", j.cmd, "id", j.req.ID, "err", err)
			return protocol.Reply{ID: j.req.ID, Cmd: j.cmd,
				Error: protocol.Errorf(protocol.CodeInternal, "the state store could not be written; nothing was done")}, true
		}
		j.intent = true
	}
	ctx, cancel := context.WithTimeout(slots.WithRequestID(d.ctx, j.req.ID), j.deadline)
	end := d.begin(StepRun)
	result, err := j.run(ctx, j)
	end()
	cancel()
	rep := protocol.Reply{ID: j.req.ID, Cmd: j.cmd, OK: err == nil}
	if err != nil {
		d.errors.Add(1)
		rep.Error = toProtocolError(err)
		if rep.Error.Code == protocol.CodeInternal {
			slog.Error("command failed", "cmd", j.cmd, "id", j.req.ID, "err", err)
		}
	} else if rep.Result, err = json.Marshal(result); err != nil {
		rep.OK, rep.Result, rep.Error = false, nil, protocol.Errorf(protocol.CodeInternal, "encoding the result failed")
	}
	return rep, true
}

// runFinisher commits finished jobs in batches: whatever has queued up while the
// last batch was syncing goes in the next one.
func (d *Device) runFinisher(ch <-chan finished) {
	for f := range ch {
		batch := []finished{f}
	more:
		for len(batch) < 64 {
			select {
			case g, ok := <-ch:
				if !ok {
					break more
				}
				batch = append(batch, g)
			default:
				break more
			}
		}
		d.commit(batch)
	}
}

// commit records the batch in the audit trail, caches the replies, then publishes
// them: nothing leaves unrecorded, and a redelivery always finds a request either in
// flight or in the cache (record.go).
func (d *Device) commit(batch []finished) {
	end := d.begin(StepVerify)
	for i := range batch {
		f := &batch[i]
		if f.j.check == nil || !f.rep.OK {
			continue
		}
		if err := f.j.check(); err != nil {
			slog.Error("signature withheld", "cmd", f.j.cmd, "id", f.j.req.ID, "err", err)
			f.rep = protocol.Reply{ID: f.j.req.ID, Cmd: f.j.cmd,
				Error: protocol.Errorf(protocol.CodeInternal, "the HSM produced a signature that does not verify; it was not handed out")}
		}
	}
	end()
	end = d.begin(StepRecord)
	payloads, offline := d.record(batch)
	end()
	if offline {
		d.notePresence() // a token went away under these requests
	}
	out := make([]outMsg, 0, len(batch))
	for i, f := range batch {
		dups := d.done(f.j)
		out = append(out, outMsg{topic: d.replyTopic(f.j.req), payload: payloads[i]})
		if len(dups) > 0 {
			rep := f.rep
			rep.Replayed = true
			again, _ := json.Marshal(rep)
			for _, topic := range dups {
				out = append(out, outMsg{topic: topic, payload: again})
			}
		}
	}
	end = d.begin(StepPublish)
	d.publishAll(out)
	end()
}

// asyncPublisher is a transport that can put a message in flight without waiting
// for the broker's acknowledgement (mqtt.Client).
type asyncPublisher interface {
	PublishAsync(topic string, payload []byte, retained bool) (wait func(ctx context.Context) error)
}

// publishAll publishes the replies of a batch with all of them in flight at once:
// waiting for each PUBACK in turn made the finisher, not the token, the limit of a
// fast token (one broker round trip per reply).
func (d *Device) publishAll(msgs []outMsg) {
	msgs = slices.DeleteFunc(msgs, func(m outMsg) bool { return d.deliverLocal(m.topic, m.payload) })
	ap, ok := d.tr.(asyncPublisher)
	if !ok || len(msgs) <= 1 {
		for _, m := range msgs {
			d.publish(m)
		}
		return
	}
	waits := make([]func(context.Context) error, len(msgs))
	for i, m := range msgs {
		waits[i] = ap.PublishAsync(m.topic, m.payload, m.retained)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, wait := range waits {
		if err := wait(ctx); err != nil {
			d.keepUnsent(msgs[i], err)
		}
	}
}

// done takes the job out of the in-flight set and returns where its redeliveries
// want their replies.
func (d *Device) done(j *job) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.inflight[j.req.ID]
	delete(d.inflight, j.req.ID)
	if f == nil {
		return nil
	}
	return f.dupsTo
}

// cacheable: replies are kept so that a redelivery never runs twice, except answers
// that say nothing ran and a retry may succeed (busy, expired, token offline), and
// the answers to reads (status, lists, show, audit.tail, ota.status): running one
// again does nothing, and caching it would let any client fill the disk.
func cacheable(cmd string, rep protocol.Reply) bool {
	if !audited(cmd) {
		return false
	}
	if rep.Error == nil {
		return true
	}
	switch rep.Error.Code {
	case protocol.CodeBusy, protocol.CodeExpired, protocol.CodeHSMOffline, protocol.CodeInternal, protocol.CodeUnauthorized:
		return false
	}
	return true
}

// failQueued answers hsm_offline to every request waiting for a token that went away:
// they would only time out. The request running on it fails by itself.
func (d *Device) failQueued(hsmID string) {
	d.mu.Lock()
	w := d.workers[hsmID]
	d.mu.Unlock()
	if w == nil {
		return
	}
	for {
		select {
		case j, ok := <-w.queue:
			if !ok {
				return
			}
			d.done(j)
			d.replyNow(j.req, j.cmd, protocol.Errorf(protocol.CodeHSMOffline, "%s is not present", hsmID))
		default:
			return
		}
	}
}

// recordBatch appends the audited jobs of a batch to the audit trail, with one sync.
func (d *Device) recordBatch(batch []finished) error {
	if d.opts.Audit == nil {
		return nil
	}
	var recs []audit.Record
	for _, f := range batch {
		if !audited(f.j.cmd) {
			continue
		}
		r := f.j.rec
		r.RequestID, r.Requester, r.Command, r.Result = f.j.req.ID, f.j.requester, f.j.cmd, "ok"
		if r.SlotID == "" {
			r.SlotID = f.j.slotID
		}
		if f.rep.Error != nil {
			r.Result = f.rep.Error.Code
		}
		recs = append(recs, r)
	}
	if len(recs) == 0 {
		return nil
	}
	_, err := d.opts.Audit.AppendBatch(recs)
	return err
}
