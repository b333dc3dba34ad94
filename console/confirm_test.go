package console

import (
	"fmt"
	"strings"
	"testing"
)

// provisionedRoot makes a root in slot 01 through the console, as a script would.
func (l *lab) provisionedRoot(t *testing.T) (subject, serial, caID string) {
	t.Helper()
	prov := l.provCert(t, "Doomed Root", 1)
	code, _, stderr := l.console(t, "provision", "--hsm", "1", "--slot", "01", "--provisioning-cert", prov, "--as", "root")
	if code != 0 {
		t.Fatalf("provision: %s", stderr)
	}
	sl := l.slotShow(t, l.hsmID+"/01")
	c := parseCert(sl.Certificate)
	return c.Subject.String(), fmt.Sprintf("%x", c.SerialNumber), sl.CAID
}

// TestDestroyingACAKeyIsConfirmed: slot.clear --destroy-key and slot.provision
// --overwrite on a CA name the CA they would destroy (subject, serial, ca_id); in a
// script they need --yes, on a terminal a typed yes, and anything else leaves the CA
// as it was.
func TestDestroyingACAKeyIsConfirmed(t *testing.T) {
	l := startLab(t)
	subject, serial, caID := l.provisionedRoot(t)
	named := []string{"subject " + subject, "serial " + serial, "ca_id " + caID}
	slotID := l.tok.Serial[:6] + "/01"

	for _, args := range [][]string{
		{"slot.clear", "--slot-id", slotID, "--destroy-key"},
		{"slot.provision", "--hsm", l.tok.Serial[:6], "--slot", "01", "--mode", "generate", "--key-type", "p256", "--overwrite"},
	} {
		code, _, stderr := l.console(t, args...)
		if code != 2 || !strings.Contains(stderr, "give --yes to confirm") {
			t.Errorf("%s without --yes: exit %d, %s", args[0], code, stderr)
		}
		for _, n := range named {
			if !strings.Contains(stderr, n) {
				t.Errorf("%s does not name %q: %s", args[0], n, stderr)
			}
		}
		if sl := l.slotShow(t, l.hsmID+"/01"); sl.State != "provisioned" || sl.CAID != caID {
			t.Fatalf("after %s without --yes the slot is %s, ca_id %s", args[0], sl.State, sl.CAID)
		}
	}

	// On a terminal: the question, and "no" changes nothing.
	term := newTerminal(t)
	done := term.run("--broker", l.url, "--device", l.device, "slot.clear", "--slot-id", slotID, "--destroy-key")
	term.expect("slot.clear --destroy-key destroys the CA key of " + l.hsmID + "/01")
	term.expect(serial)
	term.answer("Type yes to go on: ", "no")
	term.expect("not confirmed; nothing was changed")
	if code := term.exit(done); code != 1 {
		t.Errorf("answer no: exit %d, want 1", code)
	}
	if sl := l.slotShow(t, l.hsmID+"/01"); sl.State != "provisioned" || sl.CAID != caID {
		t.Fatalf("after no, the slot is %s", sl.State)
	}

	// --overwrite --yes: a new key, and the old CA named as destroyed.
	code, _, stderr := l.console(t, "slot.provision", "--hsm", l.tok.Serial[:6], "--slot", "01", "--mode", "generate", "--key-type", "p384", "--overwrite", "--yes")
	if code != 0 || !strings.Contains(stderr, "destroyed: the CA key of "+l.hsmID+"/01") || !strings.Contains(stderr, "ca_id "+caID) {
		t.Fatalf("--overwrite --yes: exit %d, %s", code, stderr)
	}
	sl := l.slotShow(t, l.hsmID+"/01")
	if sl.State != "key_ready" || sl.CAID == caID || sl.KeyType != "p384" {
		t.Fatalf("after --overwrite the slot is %s, %s, ca_id %s", sl.State, sl.KeyType, sl.CAID)
	}

	// On a terminal, yes: the key goes, and the console says which one.
	done = term.run("--broker", l.url, "--device", l.device, "slot.clear", "--slot-id", slotID, "--destroy-key")
	term.answer("Type yes to go on: ", "yes")
	term.expect("slot " + l.hsmID + "/01: empty, key destroyed")
	term.expect("destroyed: the CA key of " + l.hsmID + "/01 (state key_ready, key p384, ca_id " + sl.CAID + ")")
	if code := term.exit(done); code != 0 {
		t.Fatalf("answer yes: exit %d:\n%s", code, term.screen.String())
	}
	code, stdout, _ := l.console(t, "hsm.list")
	if code != 0 || strings.Contains(stdout, " 01 ") {
		t.Errorf("the key is still on the token:\n%s", stdout)
	}
}
