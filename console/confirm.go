package console

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// ErrNotConfirmed: the operator did not confirm a destructive command.
var ErrNotConfirmed = errors.New("not confirmed")

// confirmDestroy names the key a destructive command would destroy and has the
// operator confirm it: on a terminal by typing yes, in a script by --yes. It returns
// the description, "" when there is nothing to destroy.
func (s *session) confirmDestroy(action, hsmID, slot string, yes bool) (string, error) {
	victim, err := s.victim(hsmID, slot)
	if err != nil || victim == "" {
		return "", err
	}
	if yes {
		return victim, nil
	}
	if !s.interactive() {
		return "", usagef("%s destroys %s; give --yes to confirm", action, victim)
	}
	fmt.Fprintf(s.stderr, "%s destroys %s.\nThis cannot be undone. Type yes to go on: ", action, victim)
	answer, err := s.readLine()
	if err != nil || strings.TrimSpace(answer) != "yes" {
		return "", &exitError{code: exitFailed, msg: "not confirmed; nothing was changed", err: ErrNotConfirmed}
	}
	return victim, nil
}

// victim describes the key in the slot: its record as slot.show has it, or, for a
// key without a record, what hsm.list says of it.
func (s *session) victim(hsmID, slot string) (string, error) {
	show, err := s.quiet(protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: hsmID + "/" + slot})
	if err != nil {
		return "", err
	}
	if show.OK {
		var sl protocol.SlotShow
		if err := result(show, &sl); err != nil {
			return "", err
		}
		return describeSlot(sl), nil
	}
	if show.Error == nil || show.Error.Code != protocol.CodeNotFound {
		printReplyError(s.stderr, show.Error)
		return "", errReported
	}
	list, err := s.quiet(protocol.CmdHSMList, nil)
	if err != nil || !list.OK {
		return "", err // the device will say what is wrong with the request itself
	}
	var res protocol.HSMListResult
	if err := result(list, &res); err != nil {
		return "", err
	}
	full, err := resolveHSM(hsmsOfList(res), hsmID)
	if err != nil {
		return "", err
	}
	for _, h := range res.HSMs {
		if h.ID != full {
			continue
		}
		for _, sl := range h.Slots {
			if sl.Occupied && sameSlot(sl.Slot, slot) {
				return fmt.Sprintf("the %s key in %s/%s (label %q), which no CA uses", dash(sl.KeyType), h.ID, sl.Slot, sl.Label), nil
			}
		}
	}
	return "", nil
}

// quiet sends a request whose reply the caller reads itself, errors included.
func (s *session) quiet(cmd string, args any) (*protocol.Reply, error) {
	reply, _, err := s.request(cmd, "", &requestFlags{}, args)
	return reply, err
}

// describeSlot names a CA the way the operator knows it: subject, serial, ca_id.
func describeSlot(sl protocol.SlotShow) string {
	parts := []string{"state " + dash(sl.State), "key " + dash(sl.KeyType)}
	if c := parseCert(sl.Certificate); c != nil {
		parts = append(parts, "subject "+c.Subject.String(), fmt.Sprintf("serial %x", c.SerialNumber))
	}
	parts = append(parts, "ca_id "+dash(sl.CAID))
	return fmt.Sprintf("the CA key of %s (%s)", sl.SlotID, strings.Join(parts, ", "))
}

func parseCert(pemText string) *x509.Certificate {
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		return nil
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil
	}
	return c
}

// sameSlot compares slot names the way the device does for PKCS#11 (case and an odd
// leading zero do not count); other names compare exactly.
func sameSlot(a, b string) bool {
	norm := func(s string) string {
		s = strings.ToLower(s)
		if hexRE.MatchString(s) && len(s)%2 == 1 {
			s = "0" + s
		}
		return s
	}
	return norm(a) == norm(b)
}
