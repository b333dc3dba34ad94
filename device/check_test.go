package device

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// A signature whose check fails on the finisher is withheld: the requester gets
// internal, the audit trail says so, and nothing is cached, so a retry signs afresh.
func TestSignatureThatDoesNotVerifyIsWithheld(t *testing.T) {
	log, err := audit.Open(filepath.Join(t.TempDir(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	d, tr, r := startDevice(t, Options{Audit: log})
	j := &job{cmd: protocol.CmdSign, req: protocol.Request{ID: "bad-sig"}, fp: []byte{1}, slotID: r.hsmID + "/01",
		check: func() error { return errors.New("ECDSA verification failed") }}
	j.rec.Kind = protocol.KindDigest
	d.commit([]finished{{j, protocol.Reply{ID: "bad-sig", Cmd: protocol.CmdSign, OK: true,
		Result: json.RawMessage(`{"signature":"c2lnbmF0dXJl"}`)}}})

	rep := tr.reply(t, d, "bad-sig")
	if rep.OK || rep.Error == nil || rep.Error.Code != protocol.CodeInternal || strings.Contains(string(rep.Result), "c2lnbmF0dXJl") {
		t.Fatalf("reply %+v, want internal without the signature", rep)
	}
	recs := log.Tail(0)
	if len(recs) != 1 || recs[0].RequestID != "bad-sig" || recs[0].Result != protocol.CodeInternal {
		t.Fatalf("audit trail %+v, want the sign recorded as internal", recs)
	}
	if _, err := r.slots.Store.Reply("bad-sig"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the withheld reply was cached: %v", err)
	}
}
