package device

import (
	"encoding/json"
	"log/slog"
	"slices"
	"sync"

	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// markList holds the ids of cached replies whose audit records are on disk now; the
// next batch's transaction clears their marks (store.CacheReplies).
type markList struct {
	mu  sync.Mutex
	ids []string
}

func (m *markList) take() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := m.ids
	m.ids = nil
	return ids
}

func (m *markList) put(ids []string) {
	m.mu.Lock()
	m.ids = append(m.ids, ids...)
	m.mu.Unlock()
}

// record makes a batch durable before its replies leave and returns their payloads.
// A batch of signatures syncs its audit records and its cached replies at the same
// time: a request waits for the slower of the two syncs, not for both in turn. A
// batch with a journaled command keeps the order (trail, then replies with the
// intents settled), which start-up recovery relies on for those.
func (d *Device) record(batch []finished) (payloads [][]byte, offline bool) {
	if d.opts.Audit == nil || slices.ContainsFunc(batch, func(f finished) bool { return journaled(f.j.cmd) }) {
		return d.recordInTurn(batch)
	}
	return d.recordAtOnce(batch)
}

// recordInTurn writes the audit records, then caches the replies and settles the
// intents in one transaction.
func (d *Device) recordInTurn(batch []finished) ([][]byte, bool) {
	recorded := true
	if err := d.recordBatch(batch); err != nil {
		recorded = false // the intents stay: the next start records these requests
		d.withhold(batch, err)
	}
	payloads, cache, offline := d.encodeReplies(batch)
	var settled []string
	for _, f := range batch {
		if f.j.intent && recorded {
			settled = append(settled, f.j.req.ID)
		}
	}
	if err := d.store.PutReplies(cache, settled...); err != nil {
		slog.Error("caching replies", "err", err)
		// The intents are settled all the same (their audit records are written);
		// left behind, the next start would take them for interrupted requests.
		if err := d.store.DeleteIntents(settled...); err != nil {
			slog.Error("dropping settled intents", "err", err)
		}
	}
	return payloads, offline
}

// recordAtOnce syncs the audit records and the cached replies concurrently. Each
// reply is cached with a mark that start-up recovery reads: a reply whose record did
// not reach the disk never left, and is dropped then.
func (d *Device) recordAtOnce(batch []finished) ([][]byte, bool) {
	seq := d.opts.Audit.Head().Seq
	payloads, cache, offline := d.encodeReplies(batch)
	auditErr := make(chan error, 1)
	go func() { auditErr <- d.recordBatch(batch) }()
	audited := d.audited.take()
	storeErr := d.store.CacheReplies(cache, seq, audited)
	aerr := <-auditErr
	ids := make([]string, 0, len(cache))
	for id := range cache {
		ids = append(ids, id)
	}
	if storeErr != nil {
		slog.Error("caching replies", "err", storeErr)
		d.audited.put(audited) // their marks are still there
		ids = nil
	}
	if aerr == nil {
		d.audited.put(ids)
		return payloads, offline
	}
	d.withhold(batch, aerr)
	// The cached replies must not answer a redelivery: their signatures are not in
	// the trail. Should this fail too, their marks make the next start drop them.
	if err := d.store.SettleUnaudited(nil, ids); err != nil {
		slog.Error("dropping replies whose audit records were not written", "err", err)
	}
	payloads, _, offline = d.encodeReplies(batch)
	return payloads, offline
}

// withhold replaces the results of audited commands when the trail could not be
// written: the requests may be repeated once it is writable again.
func (d *Device) withhold(batch []finished, err error) {
	slog.Error("audit trail not written; results withheld", "err", err)
	for i := range batch {
		if audited(batch[i].j.cmd) {
			batch[i].rep = protocol.Reply{ID: batch[i].j.req.ID, Cmd: batch[i].j.cmd,
				Error: protocol.Errorf(protocol.CodeInternal, "the audit trail could not be written")}
		}
	}
}

// encodeReplies encodes each reply once: the same bytes are cached and published.
func (d *Device) encodeReplies(batch []finished) ([][]byte, map[string]store.Reply, bool) {
	payloads := make([][]byte, len(batch))
	cache := map[string]store.Reply{}
	offline := false
	for i, f := range batch {
		payloads[i], _ = json.Marshal(f.rep)
		if cacheable(f.j.cmd, f.rep) {
			cache[f.j.req.ID] = store.Reply{Digest: f.j.fp, Payload: payloads[i], Stored: d.opts.Now()}
		}
		offline = offline || f.rep.Error != nil && f.rep.Error.Code == protocol.CodeHSMOffline
	}
	return payloads, cache, offline
}
