package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/internal/atomicfile"
	"github.com/iot-hsm/iot-hsm/protocol"
)

const revokeSynopsis = `--slot-id ID --list FILE [--serial HEX [--reason R] [--revoked-at T]]
       (--next-update T | --next-update-in D) [--this-update T] [--out FILE]`

// revokeFlags: the revocation list is a local JSON file of sign's revoked entries
// that the operator keeps; the console adds to it and signs a CRL of all of it.
type revokeFlags struct {
	slotID, list, serial, reason, revokedAt string
	sign                                    signFlags
}

func (s *session) cmdRevoke(args []string) error {
	fs, rf := s.artefactFlags("revoke", revokeSynopsis)
	var f revokeFlags
	fs.StringVar(&f.slotID, "slot-id", "", "the CA slot that signs the CRL")
	fs.StringVar(&f.list, "list", "", "the revocation list, a JSON `FILE` kept by the operator (created when missing)")
	fs.StringVar(&f.serial, "serial", "", "add this certificate serial (hex) to the list")
	fs.StringVar(&f.reason, "reason", "", "its revocation reason (default: none)")
	fs.StringVar(&f.revokedAt, "revoked-at", "", "its revocation time, RFC 3339 (default: now)")
	fs.StringVar(&f.sign.thisUpdate, "this-update", "", "thisUpdate, RFC 3339 (default: the device's now)")
	fs.StringVar(&f.sign.nextUpdate, "next-update", "", "nextUpdate, RFC 3339")
	fs.DurationVar(&f.sign.nextUpdateIn, "next-update-in", 0, "nextUpdate this long after thisUpdate (or now)")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if f.slotID == "" || f.list == "" {
		return usagef("revoke needs --slot-id and --list")
	}
	a := protocol.SignArgs{SlotID: f.slotID, Kind: protocol.KindCRL}
	if err := updateTimes(&f.sign, &a); err != nil {
		return err
	}
	list, err := revocationList(f)
	if err != nil {
		return err
	}
	number, err := s.nextCRLNumber(f.slotID)
	if err != nil {
		return err
	}
	a.Number, a.Revoked = json.Number(number.String()), list
	return s.signCRL(rf, a)
}

// revocationList reads the list, adds the new entry and writes the list back before
// anything is signed: a revocation decided is kept even when the CRL fails.
func revocationList(f revokeFlags) ([]protocol.RevokedArg, error) {
	list, err := readRevocations(f.list)
	if err != nil || f.serial == "" {
		return list, err
	}
	e, err := newRevocation(f)
	if err != nil {
		return nil, err
	}
	for _, r := range list {
		if sameSerial(r.Serial, e.Serial) {
			return nil, usagef("serial %s is already on %s (revoked %s)", e.Serial, f.list, r.RevokedAt.Format(time.RFC3339))
		}
	}
	list = append(list, e)
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(f.list, append(out, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("--list: %v", err)
	}
	return list, nil
}

func readRevocations(path string) ([]protocol.RevokedArg, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("--list: %v", err)
	}
	var list []protocol.RevokedArg
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if len(bytes.TrimSpace(data)) > 0 {
		if err := dec.Decode(&list); err != nil {
			return nil, usagef("--list %s: %v", path, err)
		}
	}
	return list, nil
}

func newRevocation(f revokeFlags) (protocol.RevokedArg, error) {
	if _, ok := serialValue(f.serial); !ok {
		return protocol.RevokedArg{}, usagef("--serial %q is not a positive hex number of at most 20 octets", f.serial)
	}
	if f.reason != "" {
		if _, err := ca.ParseReason(f.reason); err != nil {
			return protocol.RevokedArg{}, usagef("--reason: %v", err)
		}
	}
	at := time.Now().UTC().Truncate(time.Second)
	if f.revokedAt != "" {
		t, err := timeFlag("revoked-at", f.revokedAt, nil)
		if err != nil {
			return protocol.RevokedArg{}, err
		}
		at = *t
	}
	return protocol.RevokedArg{Serial: strings.ToLower(f.serial), RevokedAt: at, Reason: f.reason}, nil
}

func serialValue(s string) (*big.Int, bool) {
	n, ok := new(big.Int).SetString(strings.TrimPrefix(strings.ToLower(s), "0x"), 16)
	return n, ok && n.Sign() > 0 && n.BitLen() <= 159
}

func sameSerial(a, b string) bool {
	x, ok1 := serialValue(a)
	y, ok2 := serialValue(b)
	return ok1 && ok2 && x.Cmp(y) == 0
}

// nextCRLNumber is one above the last number the appliance signed for the slot's CA.
func (s *session) nextCRLNumber(slotID string) (*big.Int, error) {
	reply, err := s.call(protocol.CmdSlotShow, "", &requestFlags{}, protocol.SlotIDArgs{SlotID: slotID})
	if err != nil {
		return nil, err
	}
	var sl protocol.SlotShow
	if err := result(reply, &sl); err != nil {
		return nil, err
	}
	last := big.NewInt(0)
	if sl.LastCRLNumber != "" {
		if _, ok := last.SetString(sl.LastCRLNumber.String(), 10); !ok {
			return nil, fmt.Errorf("slot.show: last_crl_number %q is not a number", sl.LastCRLNumber)
		}
	}
	return last.Add(last, big.NewInt(1)), nil
}

func (s *session) signCRL(rf *requestFlags, a protocol.SignArgs) error {
	reply, err := s.call(protocol.CmdSign, "", rf, a)
	if err != nil {
		return err
	}
	var res protocol.SignResult
	if err := result(reply, &res); err != nil {
		return err
	}
	return s.emit(rf, artefact{text: res.CRL, summary: fmt.Sprintf("CRL number %s with %d revoked certificates, signed by slot %s",
		a.Number, len(a.Revoked), dash(res.SlotID))})
}
