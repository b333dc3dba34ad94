package device

import (
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// The epoch is a retained marker beside a CA's claims. A broker that restarts without
// its state loses both; the first member to come back finds no marker, or one other
// than the one it remembers, and marks the new state "lost" from then on. Until the
// claim window has passed after that, no member can know every claim made before it,
// so a request that may have been sent before is not signed (fleet.md).

// epochState is what this member knows of one CA's epoch.
type epochState struct {
	sync     string          // the probe sent at the last connect, until it comes back
	seen     *protocol.Epoch // the marker the broker sent since that connect
	settled  bool            // the probe came back: seen is all there is
	current  protocol.Epoch  // the marker the broker holds
	holdFrom time.Time       // claims made before it may be lost; zero: none
	// expect holds the unexpired claims known at the connect ("member|ca_id/id"),
	// until the broker sends them again: one it does not send was lost with its state,
	// even if the marker survived (a broker restored from an older save).
	expect map[string]bool
}

func (f *fleet) settled(caID string) bool {
	st := f.epochs[caID]
	return st != nil && st.settled
}

// holdsOff tells whether a request expiring at expires may have been sent before the
// broker lost the claims; f.mu held.
func (f *fleet) holdsOff(caID string, expires time.Time) bool {
	st := f.epochs[caID]
	if st == nil || !st.settled {
		return true
	}
	return !st.holdFrom.IsZero() && !expires.After(st.holdFrom.Add(f.window))
}

// probeEpoch reads a CA's epoch anew after a connect: subscribing again makes the
// broker send the retained marker after this point, and the probe published after
// the subscription comes back behind it.
func (d *Device) probeEpoch(caID string) {
	f := d.fleet
	n := nonce()
	f.mu.Lock()
	st := f.epochs[caID]
	if st == nil {
		st = &epochState{}
		f.epochs[caID] = st
	}
	st.sync, st.seen, st.settled = n, nil, false
	st.expect = f.knownClaims(caID, d.opts.Now())
	f.mu.Unlock()
	if err := d.caTransport().Subscribe(d.topics.CAFleetFilter(caID), d.handleFleet); err != nil {
		slog.Warn("subscribing the fleet topics of a CA", "ca_id", caID, "err", err)
	}
	payload, _ := json.Marshal(protocol.Epoch{Sync: n})
	d.publishCA(d.topics.CAEpoch(caID), payload, false)
}

// FleetConnected is called after every (re)connect of the CA session.
func (d *Device) FleetConnected() {
	d.mu.Lock()
	cas := make([]string, 0, len(d.caSubs))
	for id := range d.caSubs {
		cas = append(cas, id)
	}
	d.mu.Unlock()
	for _, id := range cas {
		d.probeEpoch(id)
	}
}

// fleetEpoch takes an epoch marker or a probe.
func (d *Device) fleetEpoch(caID string, payload []byte) {
	var e protocol.Epoch
	if len(payload) == 0 || json.Unmarshal(payload, &e) != nil {
		return
	}
	f := d.fleet
	f.mu.Lock()
	st := f.epochs[caID]
	switch {
	case st == nil:
	case e.Sync != "":
		if e.Sync != st.sync || st.settled {
			break
		}
		pub := f.settle(caID, st, d.opts.Now())
		f.mu.Unlock()
		if pub != nil {
			out, _ := json.Marshal(pub)
			d.publishCA(d.topics.CAEpoch(caID), out, true)
			slog.Info("fleet epoch marked", "ca_id", caID, "since", pub.Since, "claims_lost", pub.Lost)
		}
		d.decideEchoed(caID)
		return
	case !st.settled:
		st.seen = &e
	default:
		// Another member marked a state: the broker now holds its marker.
		st.current = e
		f.hold(st)
		f.remember(caID, e)
	}
	f.mu.Unlock()
}

// settle decides the epoch once the probe came back, and returns the marker to
// publish, if any; f.mu held.
func (f *fleet) settle(caID string, st *epochState, now time.Time) *protocol.Epoch {
	known, had := f.known[caID]
	var pub *protocol.Epoch
	switch {
	case st.seen == nil: // a fresh broker state: lost when this member knew one
		e := protocol.Epoch{Since: now.UTC(), Lost: had}
		st.current, pub = e, &e
	case f.missing(st, now):
		e := protocol.Epoch{Since: now.UTC(), Lost: true}
		st.current, pub = e, &e
	case had && !known.Since.Equal(st.seen.Since) && !st.seen.Lost:
		// Made by a member that did not know the state before; this one did.
		e := protocol.Epoch{Since: st.seen.Since, Lost: true}
		st.current, pub = e, &e
	default:
		st.current = *st.seen
	}
	f.hold(st)
	st.settled, st.sync = true, ""
	f.remember(caID, st.current)
	return pub
}

// knownClaims lists the unexpired claims of a CA this member knows of; f.mu held.
func (f *fleet) knownClaims(caID string, now time.Time) map[string]bool {
	out := map[string]bool{}
	prefix := caID + "/"
	for key, exp := range f.own {
		if strings.HasPrefix(key, prefix) && exp.After(now) {
			out[f.member+"|"+key] = true
		}
	}
	for key, cs := range f.others {
		if !strings.HasPrefix(key, prefix) {
			continue
		}
		for _, c := range cs {
			if c.expires.After(now) {
				out[c.member+"|"+key] = true
			}
		}
	}
	return out
}

// missing tells whether a claim known at the connect, still unexpired, did not come
// back from the broker; f.mu held.
func (f *fleet) missing(st *epochState, now time.Time) bool {
	for k := range st.expect {
		member, key, _ := strings.Cut(k, "|")
		if member == f.member && f.own[key].After(now) {
			return true
		}
		if member != f.member {
			if _, taken := f.takenBy(key, now); taken {
				return true
			}
		}
	}
	return false
}

func (f *fleet) hold(st *epochState) {
	if st.current.Lost && st.current.Since.After(st.holdFrom) {
		st.holdFrom = st.current.Since
	}
}

// remember keeps the marker, on disk when a file is set, to compare after a restart.
func (f *fleet) remember(caID string, e protocol.Epoch) {
	if k, ok := f.known[caID]; ok && k.Since.Equal(e.Since) && k.Lost == e.Lost {
		return
	}
	f.known[caID] = e
	if f.file == "" {
		return
	}
	b, _ := json.Marshal(f.known)
	tmp := f.file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		slog.Error("fleet epochs not written", "err", err)
		return
	}
	if err := os.Rename(tmp, f.file); err != nil {
		slog.Error("fleet epochs not written", "err", err)
	}
}

func loadEpochs(file string) map[string]protocol.Epoch {
	m := map[string]protocol.Epoch{}
	if file == "" {
		return m
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return m
	}
	if json.Unmarshal(b, &m) != nil {
		slog.Warn("fleet epochs unreadable; taken as none", "file", file)
		return map[string]protocol.Epoch{}
	}
	return m
}
