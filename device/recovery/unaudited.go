package recovery

import (
	"log/slog"
	"math"

	"github.com/iot-hsm/iot-hsm/audit"
)

// Unaudited settles the replies the device cached while their audit records were
// being synced (store.CacheReplies). One whose record is in the trail stays; one
// whose record is not never left the appliance (a reply is published only after
// both syncs), and is dropped, so a redelivery runs the request again instead of
// getting a signature the trail does not show.
func (rc *Recovery) Unaudited() {
	marks, err := rc.Store.Unaudited()
	if err != nil {
		slog.Error("reading the marks of replies cached with their audit records", "err", err)
		return
	}
	if len(marks) == 0 {
		return
	}
	var keep, drop []string
	if rc.Audit == nil {
		// No trail to check against: nothing is dropped.
		for id := range marks {
			keep = append(keep, id)
		}
	} else {
		recorded, err := rc.recordedAfter(marks)
		if err != nil {
			slog.Error("reading the audit trail for replies cached with their records; kept for the next start", "err", err)
			return
		}
		for id := range marks {
			if recorded[id] {
				keep = append(keep, id)
			} else {
				drop = append(drop, id)
			}
		}
	}
	if len(drop) > 0 {
		slog.Warn("replies cached just before the last stop had no audit record and never left; dropped, so a redelivery runs again",
			"count", len(drop))
	}
	if err := rc.Store.SettleUnaudited(keep, drop); err != nil {
		slog.Error("settling the replies cached with their audit records", "err", err)
	}
}

// recordedAfter returns the marked ids that have an audit record after their mark.
func (rc *Recovery) recordedAfter(marks map[string]uint64) (map[string]bool, error) {
	oldest := uint64(math.MaxUint64)
	for _, seq := range marks {
		oldest = min(oldest, seq)
	}
	recorded := map[string]bool{}
	err := rc.Audit.Since(oldest, func(r audit.Record) {
		if seq, ok := marks[r.RequestID]; ok && r.Seq > seq {
			recorded[r.RequestID] = true
		}
	})
	return recorded, err
}
