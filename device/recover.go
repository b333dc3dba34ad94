package device

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// lostDigest marks a cached "reply" that stands for a request which ran and was
// recorded in the audit trail, but whose reply was lost when the appliance stopped
// between the audit record and the reply cache. A redelivery then learns what
// happened instead of running the request a second time.
var lostDigest = []byte("lost-in-crash")

// recoverLostReplies runs at start-up, before requests are taken: every recent
// audit record of a request that ran and has no cached reply gets the marker.
func (d *Device) recoverLostReplies() {
	if d.opts.Audit == nil {
		return
	}
	n := 0
	for _, r := range d.opts.Audit.Tail(0) {
		if r.Result != "ok" || r.RequestID == "" {
			continue
		}
		if _, err := d.store.Reply(r.RequestID); !errors.Is(err, store.ErrNotFound) {
			continue
		}
		payload, _ := json.Marshal(struct {
			Seq uint64 `json:"seq"`
		}{r.Seq})
		if err := d.store.PutReply(r.RequestID, store.Reply{Digest: lostDigest, Payload: payload, Stored: d.opts.Now()}); err != nil {
			slog.Error("recording a lost reply", "id", r.RequestID, "err", err)
			continue
		}
		n++
	}
	if n > 0 {
		slog.Warn("requests ran before the last stop but their replies were lost; redeliveries will be told so", "count", n)
	}
}

// lostReply answers a redelivery of a request whose reply was lost.
func lostReply(stored store.Reply) (*protocol.Error, bool) {
	if !bytes.Equal(stored.Digest, lostDigest) {
		return nil, false
	}
	var p struct {
		Seq uint64 `json:"seq"`
	}
	_ = json.Unmarshal(stored.Payload, &p)
	return &protocol.Error{Code: protocol.CodeConflict,
		Message: fmt.Sprintf("this request ran before the appliance stopped and its reply was lost; it is audit record %d (audit.tail); it is not run again", p.Seq),
		Details: map[string]any{"audit_seq": p.Seq}}, true
}
