// Package recovery settles at start-up what the last stop of the appliance left
// behind: requests it stopped inside (an intent in the state store, no audit record)
// get their audit record, and requests that ran but whose reply never reached the
// reply cache get a marker there, so that a redelivery is told what happened instead
// of running a second time; a reply cached while its audit record was still being
// synced, and whose record did not reach the disk, is dropped (it never left). It
// runs before the device takes any request.
package recovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// lostDigest marks a lost reply (store.LostDigest): a redelivery then learns what
// happened instead of running the request a second time.
var lostDigest = store.LostDigest

// resultInterrupted is the audit result of a request the appliance stopped inside,
// whose effect could not be confirmed from the state it left.
const resultInterrupted = "interrupted"

// Recovery is what recovery reads and writes: the state store (intents, reply cache)
// and the audit trail.
type Recovery struct {
	Store *store.Store
	// Audit is the trail; nil when the appliance keeps none.
	Audit *audit.Log
	Now   func() time.Time
	// Retention is how long replies are kept: an older request had its reply
	// pruned, not lost.
	Retention time.Duration
}

// Run drops the replies cached without their audit records, settles the intents,
// then marks the lost replies: all before any redelivery can arrive.
func (rc *Recovery) Run() {
	rc.Unaudited()
	rc.Intents()
	rc.LostReplies()
}

// Intents runs at start-up, before LostReplies: a request that left
// an intent and no audit record was running when the appliance stopped. It gets its
// audit record now, "ok" when the slot record shows the request's change landed,
// "interrupted" otherwise, so that the trail holds every change of state.
func (rc *Recovery) Intents() {
	intents, err := rc.Store.Intents()
	if err != nil {
		slog.Error("reading the intents of interrupted requests", "err", err)
		return
	}
	if len(intents) == 0 {
		return
	}
	// The newest audit record of each intent's id: an intent is recorded when a
	// record of its id came after the intent was written.
	recorded, err := rc.intentRecords(intents)
	if err != nil {
		slog.Error("reading the audit trail for interrupted requests; kept for the next start", "err", err)
		return
	}
	var recs []audit.Record
	ids := slices.Sorted(maps.Keys(intents))
	for _, id := range ids {
		in := intents[id]
		if r, ok := recorded[id]; ok && r.Seq > in.AuditSeq {
			// Stopped after its audit record: a redelivery is told, however far
			// back in the trail the record is.
			if _, err := rc.Store.Reply(id); errors.Is(err, store.ErrNotFound) && ranOnce(r) {
				rc.markLost(r)
			}
			continue
		}
		result, note := rc.settle(id, in)
		recs = append(recs, audit.Record{RequestID: id, Requester: in.Requester, Command: in.Command,
			SlotID: in.SlotID, Result: result, Note: note})
		slog.Warn("a request was running when the appliance stopped", "cmd", in.Command, "id", id, "slot", in.SlotID, "result", result)
	}
	if rc.Audit != nil && len(recs) > 0 {
		if _, err := rc.Audit.AppendBatch(recs); err != nil {
			slog.Error("recording interrupted requests in the audit trail; kept for the next start", "err", err)
			return
		}
	}
	if rc.Audit == nil {
		// No trail to point at: the redeliveries are still told, with no record.
		for _, r := range recs {
			if ranOnce(r) {
				rc.markLost(r)
			}
		}
	}
	if err := rc.Store.DeleteIntents(ids...); err != nil {
		slog.Error("dropping settled intents", "err", err)
	}
}

// intentRecords returns the newest audit record of each intent's id written after
// the oldest intent, read from the whole trail.
func (rc *Recovery) intentRecords(intents map[string]store.Intent) (map[string]audit.Record, error) {
	recorded := map[string]audit.Record{}
	if rc.Audit == nil {
		return recorded, nil
	}
	oldest := uint64(math.MaxUint64)
	for _, in := range intents {
		oldest = min(oldest, in.AuditSeq)
	}
	err := rc.Audit.Since(oldest, func(r audit.Record) {
		if _, ok := intents[r.RequestID]; ok {
			recorded[r.RequestID] = r
		}
	})
	return recorded, err
}

// settle decides from the slot record what an interrupted request left behind: a
// record written by request id shows its change landed.
func (rc *Recovery) settle(id string, in store.Intent) (result, note string) {
	const stopped = "the appliance stopped before this was recorded; recorded at the next start"
	if in.SlotID == "" {
		return resultInterrupted, stopped + "; whether it took effect is unknown"
	}
	rec, err := rc.Store.Slot(in.SlotID)
	switch {
	case errors.Is(err, store.ErrNotFound) && in.Command == protocol.CmdSlotClear:
		return "ok", stopped + "; the slot record is gone"
	case errors.Is(err, store.ErrNotFound):
		return resultInterrupted, stopped + "; there is no slot record (a key may have been made on the token: slot.provision with mode existing takes it over)"
	case err != nil:
		return resultInterrupted, stopped + "; the slot record could not be read"
	case rec.Request == id && in.Command != protocol.CmdSlotClear:
		return "ok", fmt.Sprintf("%s; the slot record shows it done (%s)", stopped, rec.State)
	}
	return resultInterrupted, fmt.Sprintf("%s; the slot is still %s", stopped, rec.State)
}

// ranOnce tells the audit records whose request must not run again when it is
// redelivered: those that ran, and an interrupted hsm.set_pin. That one presents a
// PIN to the card; if the card refused it before the stop, running it again would
// spend a second try that nobody decided on. Any other interrupted request left its
// slot record as it was; running it again is what the requester wants, and safe: a
// key half made on the token makes the retry fail with "holds a key", it does not
// make a second one.
func ranOnce(r audit.Record) bool {
	return r.Result == "ok" || r.Result == resultInterrupted && r.Command == protocol.CmdHSMSetPIN
}

// LostReplies runs at start-up, before requests are taken: every recent
// audit record of a request that ran and has no cached reply gets the marker.
func (rc *Recovery) LostReplies() {
	if rc.Audit == nil {
		return
	}
	// A record older than the retention had its reply pruned, not lost.
	cutoff := rc.Now().Add(-rc.Retention)
	n := 0
	for _, r := range rc.Audit.Tail(0) {
		if r.RequestID == "" || !ranOnce(r) || r.Time.Before(cutoff) {
			continue
		}
		if _, err := rc.Store.Reply(r.RequestID); !errors.Is(err, store.ErrNotFound) {
			continue
		}
		if rc.markLost(r) {
			n++
		}
	}
	if n > 0 {
		slog.Warn("requests ran before the last stop but their replies were lost; redeliveries will be told so", "count", n)
	}
}

// lostMarker is the payload of a lost reply's marker.
type lostMarker struct {
	Seq         uint64 `json:"seq"`
	Interrupted bool   `json:"interrupted,omitempty"`
}

// markLost stores the marker for the request of audit record r.
func (rc *Recovery) markLost(r audit.Record) bool {
	payload, _ := json.Marshal(lostMarker{Seq: r.Seq, Interrupted: r.Result == resultInterrupted})
	if err := rc.Store.PutReply(r.RequestID, store.Reply{Digest: lostDigest, Payload: payload, Stored: rc.Now()}); err != nil {
		slog.Error("recording a lost reply", "id", r.RequestID, "err", err)
		return false
	}
	return true
}

// LostReply answers a redelivery of a request whose reply was lost: false when
// stored is a reply like any other.
func LostReply(stored store.Reply) (*protocol.Error, bool) {
	if !bytes.Equal(stored.Digest, lostDigest) {
		return nil, false
	}
	var p lostMarker
	_ = json.Unmarshal(stored.Payload, &p)
	what := "ran before the appliance stopped and its reply was lost"
	if p.Interrupted {
		what = "was interrupted when the appliance stopped and may have taken effect"
	}
	msg := fmt.Sprintf("this request %s; it is not run again", what)
	details := map[string]any{}
	if p.Seq > 0 {
		msg = fmt.Sprintf("this request %s; it is audit record %d (audit.tail); it is not run again", what, p.Seq)
		details["audit_seq"] = p.Seq
	}
	if p.Interrupted {
		details["interrupted"] = true
	}
	return &protocol.Error{Code: protocol.CodeConflict, Message: msg, Details: details}, true
}
