package leds

import (
	"sort"
	"strings"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// provisioned is the slot state of a CA key ready to sign (store.Provisioned in the
// status document's spelling; the LEDs need nothing else of the store).
const provisioned = "provisioned"

// Phase is where the daemon is in its life.
type Phase int

const (
	Starting Phase = iota
	Running
	Reloading
	Updating
	Stopping
)

// View is what the LEDs show: the status document, and what it does not carry.
type View struct {
	Phase  Phase
	Status protocol.Status
	// Fault is a condition the operator must see that no slot explains, e.g. a
	// wedged token worker.
	Fault string
	// SignErrors are the slots whose last signature failed on the token side.
	SignErrors map[string]bool
}

// StatusPattern is the status LED:
//
//	starting, reloading, update in progress   fast blink  (busy: leave it plugged in)
//	error (fault, PIN or signing error)       double blink
//	broker down                               slow blink
//	all well                                  on
//	stopped                                   off
func StatusPattern(v View) Pattern {
	switch v.Phase {
	case Starting, Reloading, Updating:
		return FastBlink
	case Stopping:
		return Off
	}
	if v.Fault != "" {
		return DoubleBlink
	}
	for _, h := range v.Status.HSMs {
		if h.Present && v.hsmFault(h) {
			return DoubleBlink
		}
	}
	if v.Status.Broker != "connected" {
		return SlowBlink
	}
	return On
}

// HSMPattern is the LED of one HSM, summing up its slots:
//
//	absent (or unknown)                                    off
//	present, no slot ready (provisioning incomplete)       slow blink
//	a provisioned slot ready to sign (token unlocked)      on
//	PIN refused or blocked under a provisioned slot,
//	or the last signature of one of its slots failed       double blink
func HSMPattern(v View, hsmID string) Pattern {
	h, ok := v.hsm(hsmID)
	if !ok || !h.Present {
		return Off
	}
	if v.hsmFault(h) {
		return DoubleBlink
	}
	for _, s := range v.slotsOf(hsmID) {
		if s.State == provisioned && h.PIN.Set {
			return On
		}
	}
	return SlowBlink
}

// SlotPattern is the LED of one slot, with the same meanings as HSMPattern. "On" is
// the slot's own readiness: whether the broker is up is the status LED's to show.
func SlotPattern(v View, slotID string) Pattern {
	hsmID, _, _ := strings.Cut(slotID, "/")
	h, ok := v.hsm(hsmID)
	if !ok || !h.Present {
		return Off
	}
	s, ok := v.slot(slotID)
	if !ok {
		return SlowBlink // the token is there; the slot is not provisioned yet
	}
	ready := s.State == provisioned
	switch {
	case v.SignErrors[slotID], ready && pinFault(h):
		return DoubleBlink
	case ready && h.PIN.Set:
		return On
	}
	return SlowBlink
}

// HSMAt is the HSM at a 1-based position in id order, for LEDs assigned by position.
func HSMAt(st protocol.Status, position int) string {
	ids := make([]string, 0, len(st.HSMs))
	for _, h := range st.HSMs {
		ids = append(ids, h.ID)
	}
	sort.Strings(ids)
	if position < 1 || position > len(ids) {
		return ""
	}
	return ids[position-1]
}

// hsmFault: a PIN problem under a provisioned slot (keys the appliance should sign
// with but cannot), or a failed signature on one of its slots.
func (v View) hsmFault(h protocol.StatusHSM) bool {
	for _, s := range v.slotsOf(h.ID) {
		if v.SignErrors[s.SlotID] || (s.State == provisioned && pinFault(h)) {
			return true
		}
	}
	return false
}

// pinFault: no accepted PIN (none configured, or refused), or the token locked it.
func pinFault(h protocol.StatusHSM) bool {
	return !h.PIN.Set || (h.PIN.Retries != nil && *h.PIN.Retries == 0)
}

func (v View) hsm(id string) (protocol.StatusHSM, bool) {
	for _, h := range v.Status.HSMs {
		if h.ID == id {
			return h, true
		}
	}
	return protocol.StatusHSM{}, false
}

func (v View) slot(id string) (protocol.StatusSlot, bool) {
	for _, s := range v.Status.Slots {
		if s.SlotID == id {
			return s, true
		}
	}
	return protocol.StatusSlot{}, false
}

func (v View) slotsOf(hsmID string) []protocol.StatusSlot {
	var out []protocol.StatusSlot
	for _, s := range v.Status.Slots {
		if h, _, _ := strings.Cut(s.SlotID, "/"); h == hsmID {
			out = append(out, s)
		}
	}
	return out
}

// TokenFault tells the reply codes of a failed signature that the LEDs show: the
// token or its PIN failed. A refused request (bad_request, policy_denied, ...) is the
// requester's problem and does not light an error.
func TokenFault(code string) bool {
	switch code {
	case protocol.CodeHSMOffline, protocol.CodePINRequired, protocol.CodePINIncorrect,
		protocol.CodePINBlocked, protocol.CodeInternal:
		return true
	}
	return false
}
