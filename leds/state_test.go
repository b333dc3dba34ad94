package leds

import (
	"testing"

	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

func retries(n int) *int { return &n }

// status builds a status document: one HSM "tok" with slots 01 (provisioned) and
// 02 (key_ready) unless changed by the callers.
func status(broker string, present, pinSet bool) protocol.Status {
	return protocol.Status{
		Online: true, Broker: broker,
		HSMs: []protocol.StatusHSM{{ID: "tok", Kind: "pkcs11", Present: present, PIN: protocol.PINStatus{Set: pinSet}}},
		Slots: []protocol.StatusSlot{
			{SlotID: "tok/01", State: string(store.Provisioned)},
			{SlotID: "tok/02", State: string(store.KeyReady)},
		},
	}
}

func TestProvisionedSpelling(t *testing.T) {
	if provisioned != string(store.Provisioned) {
		t.Fatalf("leds spells provisioned %q, the store %q", provisioned, store.Provisioned)
	}
}

func TestPatternForEachState(t *testing.T) {
	up := status("connected", true, true)
	down := status("disconnected", true, true)
	absent := status("connected", false, true)
	noPIN := status("connected", true, false)
	blocked := status("connected", true, false)
	blocked.HSMs[0].PIN.Retries = retries(0)
	onlyIncomplete := status("connected", true, true)
	onlyIncomplete.Slots = onlyIncomplete.Slots[1:]
	noSlots := status("connected", true, false)
	noSlots.Slots = nil

	for _, tc := range []struct {
		name                string
		v                   View
		status, hsm, s1, s2 Pattern
	}{
		{"starting", View{Phase: Starting, Status: up}, FastBlink, On, On, SlowBlink},
		{"reloading", View{Phase: Reloading, Status: up}, FastBlink, On, On, SlowBlink},
		{"update in progress", View{Phase: Updating, Status: up}, FastBlink, On, On, SlowBlink},
		{"stopping", View{Phase: Stopping, Status: up}, Off, On, On, SlowBlink},
		{"all well", View{Phase: Running, Status: up}, On, On, On, SlowBlink},
		{"broker down", View{Phase: Running, Status: down}, SlowBlink, On, On, SlowBlink},
		{"fault", View{Phase: Running, Status: up, Fault: "worker wedged"}, DoubleBlink, On, On, SlowBlink},
		{"token absent", View{Phase: Running, Status: absent}, On, Off, Off, Off},
		{"PIN refused under a CA key", View{Phase: Running, Status: noPIN}, DoubleBlink, DoubleBlink, DoubleBlink, SlowBlink},
		{"PIN blocked", View{Phase: Running, Status: blocked}, DoubleBlink, DoubleBlink, DoubleBlink, SlowBlink},
		{"sign error", View{Phase: Running, Status: up, SignErrors: map[string]bool{"tok/01": true}}, DoubleBlink, DoubleBlink, DoubleBlink, SlowBlink},
		{"provisioning incomplete", View{Phase: Running, Status: onlyIncomplete}, On, SlowBlink, SlowBlink, SlowBlink},
		{"no PIN, nothing provisioned", View{Phase: Running, Status: noSlots}, On, SlowBlink, SlowBlink, SlowBlink},
	} {
		if got := StatusPattern(tc.v); got != tc.status {
			t.Errorf("%s: status LED %v, want %v", tc.name, got, tc.status)
		}
		if got := HSMPattern(tc.v, "tok"); got != tc.hsm {
			t.Errorf("%s: HSM LED %v, want %v", tc.name, got, tc.hsm)
		}
		if got := SlotPattern(tc.v, "tok/01"); got != tc.s1 {
			t.Errorf("%s: slot 01 LED %v, want %v", tc.name, got, tc.s1)
		}
		if got := SlotPattern(tc.v, "tok/02"); got != tc.s2 {
			t.Errorf("%s: slot 02 LED %v, want %v", tc.name, got, tc.s2)
		}
	}
	if got := HSMPattern(View{Status: up}, "other"); got != Off {
		t.Errorf("unknown HSM: %v, want off", got)
	}
}

func TestHSMAt(t *testing.T) {
	st := protocol.Status{HSMs: []protocol.StatusHSM{{ID: "yubikey-2"}, {ID: "pkcs11-1"}}}
	if HSMAt(st, 1) != "pkcs11-1" || HSMAt(st, 2) != "yubikey-2" || HSMAt(st, 3) != "" || HSMAt(st, 0) != "" {
		t.Errorf("positions: %q %q %q", HSMAt(st, 1), HSMAt(st, 2), HSMAt(st, 3))
	}
}

func TestTokenFault(t *testing.T) {
	for code, want := range map[string]bool{
		protocol.CodeHSMOffline: true, protocol.CodePINIncorrect: true, protocol.CodePINBlocked: true,
		protocol.CodePINRequired: true, protocol.CodeInternal: true,
		protocol.CodeBadRequest: false, protocol.CodePolicyDenied: false, protocol.CodeNotFound: false, "": false,
	} {
		if TokenFault(code) != want {
			t.Errorf("TokenFault(%q) = %v", code, !want)
		}
	}
}
