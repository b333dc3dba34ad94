package device

import (
	"encoding/json"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// handleFleet takes the claims and epoch markers of the CA topics served. It runs on
// the CA session's goroutine and never waits on the network.
func (d *Device) handleFleet(topic string, payload []byte) {
	caID, kind, member, id, ok := d.topics.ParseCAFleetTopic(topic)
	if !ok {
		return
	}
	if kind == "epoch" {
		d.fleetEpoch(caID, payload)
		return
	}
	key := claimKey(caID, id)
	f := d.fleet
	var c protocol.Claim
	if len(payload) == 0 || json.Unmarshal(payload, &c) != nil {
		f.mu.Lock()
		f.forget(key, member) // withdrawn by a member that lost it, or expired
		f.mu.Unlock()
		return
	}
	f.mu.Lock()
	if st := f.epochs[caID]; st != nil && !st.settled {
		delete(st.expect, member+"|"+key)
	}
	if member != f.member {
		if c.ExpiresAt.After(d.opts.Now()) && !hasMember(f.others[key], member) {
			f.others[key] = append(f.others[key], otherClaim{member: member, expires: c.ExpiresAt})
		}
		f.mu.Unlock()
		return
	}
	// Also an older copy left by an earlier run: it is cleared once it expires, and,
	// its nonce being another, it decides nothing.
	f.own[key] = c.ExpiresAt
	p := f.mine[key]
	echo := p != nil && p.nonce == c.Nonce && !p.echoed
	if echo {
		p.echoed = true
	}
	settled := f.settled(caID)
	f.mu.Unlock()
	if echo && settled {
		d.decide(key)
	}
}

// forget drops a claim its member withdrew; f.mu held.
func (f *fleet) forget(key, member string) {
	if member == f.member {
		delete(f.own, key)
		return
	}
	cs := f.others[key]
	for i, c := range cs {
		if c.member == member {
			f.others[key] = append(cs[:i:i], cs[i+1:]...)
			break
		}
	}
	if len(f.others[key]) == 0 {
		delete(f.others, key)
	}
}

func hasMember(cs []otherClaim, member string) bool {
	for _, c := range cs {
		if c.member == member {
			return true
		}
	}
	return false
}

// decide settles a claim that came back: won when no other member's claim on the id
// came before it and the broker's state cannot have lost one; the request is then
// queued for its token. Otherwise it is answered claimed and this claim withdrawn.
func (d *Device) decide(key string) {
	f := d.fleet
	f.mu.Lock()
	p := f.mine[key]
	if p == nil || !p.echoed {
		f.mu.Unlock()
		return
	}
	delete(f.mine, key)
	other, taken := f.takenBy(key, d.opts.Now())
	lost := f.holdsOff(p.j.caID, *p.j.req.ExpiresAt)
	if taken || lost {
		delete(f.own, key)
	}
	f.mu.Unlock()
	var e *protocol.Error
	switch {
	case taken:
		e = claimedBy(other)
	case lost:
		e = claimsLost()
	default:
		d.enqueue(p.hsmID, p.j)
		d.mu.Lock()
		if in := d.inflight[p.j.req.ID]; in != nil {
			for _, t := range p.dupsTo {
				in.addDup(t)
			}
		}
		d.mu.Unlock()
		return
	}
	d.clearClaim(key)
	d.answerClaim(p, e)
}

// decideEchoed settles the claims of a CA that came back before its epoch was known.
func (d *Device) decideEchoed(caID string) {
	f := d.fleet
	var keys []string
	f.mu.Lock()
	for key, p := range f.mine {
		if p.echoed && p.j.caID == caID {
			keys = append(keys, key)
		}
	}
	f.mu.Unlock()
	for _, key := range keys {
		d.decide(key)
	}
}
