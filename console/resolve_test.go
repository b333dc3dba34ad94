package console

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// TestShortNamesAndAmbiguity: HSMs in slot ids and ca_ids are taken by a short,
// unambiguous name and expanded before they go on the wire; an ambiguous one is a
// usage error listing the candidates, and nothing is sent.
func TestShortNamesAndAmbiguity(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	pub := newClient(t, url, nil)
	caA, caB := "abcd01"+strings.Repeat("0", 58), "abcd02"+strings.Repeat("0", 58)
	publishRetained(t, pub, "dev1", protocol.Status{Online: true, Device: "dev1",
		HSMs: []protocol.StatusHSM{{ID: "pkcs11-4c8b8f4bc08572fc", Kind: "pkcs11"}, {ID: "pkcs11-4c9a000000000001", Kind: "pkcs11"},
			{ID: "yubikey-12345678", Kind: "yubikey"}},
		Slots: []protocol.StatusSlot{
			{SlotID: "pkcs11-4c8b8f4bc08572fc/01", State: "provisioned", Connected: true, CAID: caA, Subject: "CN=Root A"},
			{SlotID: "pkcs11-4c9a000000000001/01", State: "provisioned", Connected: true, CAID: caB, Subject: "CN=Root B"}}})
	got := fakeDevice(t, url, func(cmd string, req protocol.Request) [][]byte {
		return [][]byte{okReply(req.ID, cmd, protocol.SlotShow{SlotID: "x/01"})}
	}, "iot-hsm/dev1/cmd/+", "iot-hsm/ca/+/sign")

	for name, tc := range map[string]struct{ given, want string }{
		"start of the serial": {"4c8b/01", "pkcs11-4c8b8f4bc08572fc/01"},
		"start of the id":     {"pkcs11-4c9/01", "pkcs11-4c9a000000000001/01"},
		"number in the list":  {"3/9a", "yubikey-12345678/9a"},
		"kind, when unique":   {"yubikey/9c", "yubikey-12345678/9c"},
	} {
		code, _, stderr := run(t, "", "--broker", url, "--device", "dev1", "slot.show", "--slot-id", tc.given)
		if code != 0 {
			t.Fatalf("%s: exit %d, %s", name, code, stderr)
		}
		if m := argsMap(t, next(t, got).req.Args); m["slot_id"] != tc.want {
			t.Errorf("%s: %q went out as %v, want %s", name, tc.given, m["slot_id"], tc.want)
		}
	}

	code, _, stderr := run(t, "", "--broker", url, "--device", "dev1", "slot.show", "--slot-id", "pkcs11-4c/01")
	if code != 2 || !strings.Contains(stderr, `HSM "pkcs11-4c" is ambiguous: it could be pkcs11-4c8b8f4bc08572fc, pkcs11-4c9a000000000001`) {
		t.Errorf("ambiguous HSM: exit %d, %s", code, stderr)
	}
	code, _, stderr = run(t, "", "--broker", url, "sign", "--ca-id", "abcd0", "--kind", "digest", "--digest", strings.Repeat("00", 32))
	if code != 2 || !strings.Contains(stderr, "ca_id abcd0 is ambiguous") || !strings.Contains(stderr, caA+" (CN=Root A") || !strings.Contains(stderr, caB+" (CN=Root B") {
		t.Errorf("ambiguous ca_id: exit %d, %s", code, stderr)
	}
	select {
	case r := <-got:
		t.Errorf("an ambiguous name was sent: %s", r.topic)
	case <-time.After(200 * time.Millisecond):
	}

	code, _, stderr = run(t, "", "--broker", url, "sign", "--ca-id", "ABCD02", "--kind", "digest", "--digest", strings.Repeat("00", 32))
	if code != 0 {
		t.Fatalf("short ca_id: exit %d, %s", code, stderr)
	}
	if r := next(t, got); r.topic != "iot-hsm/ca/"+caB+"/sign" || argsMap(t, r.req.Args)["ca_id"] != caB {
		t.Errorf("short ca_id went to %s with %v", r.topic, argsMap(t, r.req.Args)["ca_id"])
	}
}

// TestResolverErrorsAreTyped: the resolver's refusals are sentinels callers can test.
func TestResolverErrorsAreTyped(t *testing.T) {
	hsms := []hsmName{{id: "pkcs11-aa01", kind: "pkcs11"}, {id: "pkcs11-aa02", kind: "pkcs11"}}
	if _, err := resolveHSM(hsms, "aa"); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("aa: %v, want ErrAmbiguous", err)
	}
	if _, err := resolveHSM(hsms, "bb"); !errors.Is(err, ErrNotFound) {
		t.Errorf("bb: %v, want ErrNotFound", err)
	}
	if id, err := resolveHSM(hsms, "aa02"); err != nil || id != "pkcs11-aa02" {
		t.Errorf("aa02: %q, %v", id, err)
	}
}

// TestUnknownOrOfflineAnsweredAtOnce: a mistyped --device or --ca-id, or a device
// whose retained status says it is offline, is answered from the status documents at
// once, not after the 30 s timeout.
func TestUnknownOrOfflineAnsweredAtOnce(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	pub := newClient(t, url, nil)
	caOn, caOff := strings.Repeat("1", 64), strings.Repeat("2", 64)
	publishRetained(t, pub, "dev1", protocol.Status{Online: true, Device: "dev1",
		Slots: []protocol.StatusSlot{{SlotID: "h/01", State: "provisioned", Connected: true, CAID: caOn}}})
	publishRetained(t, pub, "dev2", protocol.Status{Online: false, Device: "dev2",
		Slots: []protocol.StatusSlot{{SlotID: "h/01", State: "provisioned", CAID: caOff}}})
	digest := strings.Repeat("00", 32)

	for name, tc := range map[string]struct {
		args []string
		code int
		want string
	}{
		"mistyped device": {[]string{"--device", "dev3", "status"}, 1, `not_found: no device "dev3" under iot-hsm/+/status; seen: dev1 (online), dev2 (offline)`},
		"offline device":  {[]string{"--device", "dev2", "hsm.list"}, 3, "offline: device dev2 is offline"},
		"mistyped ca_id":  {[]string{"sign", "--ca-id", strings.Repeat("3", 64), "--kind", "digest", "--digest", digest}, 1, "not_found: no device holds a provisioned CA with ca_id 3333"},
		"offline ca":      {[]string{"sign", "--ca-id", caOff[:10], "--kind", "digest", "--digest", digest}, 3, "offline: ca_id 222222222222... is held by dev2:h/01"},
	} {
		start := time.Now()
		code, _, stderr := run(t, "", append([]string{"--broker", url}, tc.args...)...)
		if elapsed := time.Since(start); elapsed > 5*time.Second {
			t.Errorf("%s: answered after %s", name, elapsed)
		}
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want %d and %q", name, code, stderr, tc.code, tc.want)
		}
	}
}
