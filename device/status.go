package device

import (
	"encoding/json"
	"log/slog"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// watchInterval is how often token presence is checked. Hotplug events make this
// faster where they exist; the poll catches what they miss.
const watchInterval = 2 * time.Second

// Status builds the status document.
func (d *Device) Status() protocol.Status {
	started := d.started
	st := protocol.Status{
		Online: true, Device: d.opts.DeviceID, Version: d.opts.Version, StartedAt: &started,
		Time: d.opts.Now().UTC(), Broker: "disconnected", HSMs: []protocol.StatusHSM{}, Slots: []protocol.StatusSlot{},
		Counters: protocol.Counters{Requests: d.requests.Load(), Signatures: d.signatures.Load(),
			Errors: d.errors.Load(), Dropped: d.dropped.Load(), Refused: d.refusedCount.Load()},
	}
	if d.tr != nil && d.tr.Connected() {
		st.Broker = "connected"
	}
	for _, t := range d.reg.Tokens() {
		info := t.Info()
		st.HSMs = append(st.HSMs, protocol.StatusHSM{ID: info.ID, Kind: string(info.Kind), Present: info.Present, PIN: pinStatus(info.PIN)})
	}
	recs, err := d.store.Slots()
	if err != nil {
		slog.Error("reading slots for status", "err", err)
	}
	for _, r := range recs {
		s := protocol.StatusSlot{SlotID: r.ID, State: string(r.State), Connected: d.slotConnected(r), CAID: r.CAID, KeyType: r.KeyType}
		if c, err := certOf(r.Certificate); err == nil {
			s.Subject = c.Subject.String()
			na := c.NotAfter.UTC()
			s.NotAfter = &na
		}
		if s.Connected {
			st.ConnectedSlots++
		}
		st.Slots = append(st.Slots, s)
	}
	st.SlotsTotal = len(st.Slots)
	if d.opts.Problems != nil {
		st.Problems = d.opts.Problems()
	}
	if d.opts.Web != nil {
		w := *d.opts.Web
		st.Web = &w
	}
	return st
}

// slotConnected is the dashboard's "connected": provisioned, its token present
// and unlocked, and the broker session up.
func (d *Device) slotConnected(r store.Slot) bool {
	if r.State != store.Provisioned || d.tr == nil || !d.tr.Connected() {
		return false
	}
	t, err := d.reg.Token(r.HSM)
	if err != nil {
		return false
	}
	info := t.Info()
	return info.Present && info.PIN.Set
}

// PublishStatus publishes the retained status document.
func (d *Device) PublishStatus() {
	if d.tr == nil {
		return
	}
	st := d.Status()
	// Without a broker session the publish would only fail (and warn at every
	// start); Connected publishes the document as soon as there is one.
	if d.tr.Connected() {
		out, _ := json.Marshal(st)
		d.send(d.topics.Status(), out, true)
	}
	d.changed(st)
}

// OfflineStatus is the document for the Last Will and for a clean shutdown.
func OfflineStatus(deviceID string) []byte {
	out, _ := json.Marshal(protocol.Status{Online: false, Device: deviceID, Time: time.Now().UTC(),
		HSMs: []protocol.StatusHSM{}, Slots: []protocol.StatusSlot{}})
	return out
}

func (d *Device) event(e protocol.Event) {
	if d.tr == nil {
		return
	}
	e.Time = d.opts.Now().UTC()
	out, _ := json.Marshal(e)
	d.send(d.topics.Events(), out, false)
	if d.opts.OnEvent != nil {
		d.opts.OnEvent(out)
	}
}

// slotChanged publishes the new state, drops what was cached for the slot and
// follows the CA topics.
func (d *Device) slotChanged(slotID string, state store.State) {
	d.mu.Lock()
	delete(d.issuers, slotID)
	d.mu.Unlock()
	d.event(protocol.Event{Type: "slot.state", SlotID: slotID, State: string(state)})
	d.syncSubscriptions()
	d.PublishStatus()
}

// syncSubscriptions subscribes (shared) to the signing topic of every provisioned CA
// key and drops the topics of keys no longer held.
func (d *Device) syncSubscriptions() {
	if d.tr == nil {
		return
	}
	recs, err := d.store.Slots()
	if err != nil {
		return
	}
	want := map[string]bool{}
	for _, r := range recs {
		if r.State == store.Provisioned && r.CAID != "" {
			want[r.CAID] = true
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	tr := d.caTransport()
	for id := range want {
		if !d.caSubs[id] {
			if d.opts.Fleet {
				// The claims and the epoch first: a request may follow at once.
				d.probeEpoch(id)
			}
			if err := tr.Subscribe(d.topics.CASignShared(id), d.Handle); err != nil {
				slog.Warn("subscribing a CA topic", "ca_id", id, "err", err)
				continue
			}
			d.caSubs[id] = true
		}
	}
	for id := range d.caSubs {
		if !want[id] {
			if err := tr.Unsubscribe(d.topics.CASignShared(id)); err != nil {
				slog.Warn("unsubscribing a CA topic", "ca_id", id, "err", err)
			}
			if d.opts.Fleet {
				if err := tr.Unsubscribe(d.topics.CAFleetFilter(id)); err != nil {
					slog.Warn("unsubscribing the fleet topics of a CA", "ca_id", id, "err", err)
				}
			}
			delete(d.caSubs, id)
		}
	}
}

// watch rescans the HSMs and republishes the status when a token comes or goes.
func (d *Device) watch() {
	defer d.wg.Done()
	tick := time.NewTicker(watchInterval)
	defer tick.Stop()
	prune := time.NewTicker(pruneInterval)
	defer prune.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-tick.C:
			d.watchLive.beginScan()
			d.CheckPresence()
			d.watchLive.end()
		case <-prune.C:
			d.pruneReplies()
		}
	}
}

// pruneInterval is how often replies older than the retention are dropped: an
// appliance runs for months, and the cache would otherwise grow with every request.
const pruneInterval = time.Hour

func (d *Device) pruneReplies() {
	n, err := d.store.PruneReplies(d.opts.Now().Add(-d.opts.ReplyRetention))
	switch {
	case err != nil:
		slog.Error("pruning cached replies", "err", err)
	case n > 0:
		slog.Info("pruned cached replies", "count", n)
	}
}

// CheckPresence rescans the HSMs, and publishes events and the status when one came
// or went.
func (d *Device) CheckPresence() {
	_ = d.reg.Rescan(d.ctx)
	d.notePresence()
}

// notePresence publishes the events and the status when a token's presence differs
// from what was last published: after a scan, or after an operation that found its
// token gone.
func (d *Device) notePresence() {
	changed := false
	for _, t := range d.reg.Tokens() {
		info := t.Info()
		d.mu.Lock()
		was, known := d.present[info.ID]
		d.present[info.ID] = info.Present
		// The first look at start-up is the baseline the status document tells;
		// an HSM first seen after it (a YubiKey plugged in) is news.
		baseline := !d.presenceSeen
		d.mu.Unlock()
		if known && was == info.Present {
			continue
		}
		changed = true
		if known || !baseline && info.Present {
			typ := "hsm.absent"
			if info.Present {
				typ = "hsm.present"
			} else {
				d.failQueued(info.ID)
			}
			d.event(protocol.Event{Type: typ, HSM: info.ID})
		}
	}
	d.mu.Lock()
	d.presenceSeen = true
	d.mu.Unlock()
	if changed {
		d.PublishStatus()
	}
}
