package recovery

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// A request recorded in the audit trail whose reply never reached the cache (the
// appliance was killed between the two) is not run again when redelivered.
func TestLostReplyIsNotRunAgain(t *testing.T) {
	_, st, al := openState(t)
	// Two days old: its reply was pruned, not lost; a repeat runs (it may not be
	// the same request: ids are only unique within the reply cache's retention).
	al.Append(audit.Record{RequestID: "sign-old", Command: "sign", Result: "ok", Time: time.Now().Add(-48 * time.Hour)})
	al.Append(audit.Record{RequestID: "sign-7", Command: "sign", Result: "ok", Serial: "0a"})
	al.Append(audit.Record{RequestID: "sign-8", Command: "sign", Result: "policy_denied"})
	st.PutReply("sign-9", store.Reply{Digest: []byte{1}, Payload: []byte(`{"id":"sign-9","ok":true}`)})
	al.Append(audit.Record{RequestID: "sign-9", Command: "sign", Result: "ok"})

	rc := &Recovery{Store: st, Audit: al, Now: time.Now, Retention: 24 * time.Hour}
	rc.LostReplies()

	r, err := st.Reply("sign-7")
	if err != nil {
		t.Fatal(err)
	}
	e, lost := LostReply(r)
	if !lost || e.Code != protocol.CodeConflict || !strings.Contains(e.Message, "audit record 2") {
		t.Fatalf("lost reply: %v %+v", lost, e)
	}
	if _, err := st.Reply("sign-8"); err == nil {
		t.Fatal("a refused request was marked as run")
	}
	if _, err := st.Reply("sign-old"); err == nil {
		t.Fatal("a request older than the reply retention was marked as lost")
	}
	if r, _ := st.Reply("sign-9"); string(r.Digest) != "\x01" {
		t.Fatal("a cached reply was overwritten")
	}
}

// Requests the appliance stopped inside (an intent, no audit record) get their audit
// record at the next start: "ok" when the slot record shows their change, otherwise
// "interrupted". A redelivery of one that ran, or of a PIN change, is told so and not
// run again; one that left its slot as it was runs.
func TestInterruptedRequestsReachTheAuditTrail(t *testing.T) {
	dir, st, al := openState(t)

	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	put := func(id, cmd, slot string) {
		t.Helper()
		if err := st.PutIntent(id, store.Intent{Command: cmd, SlotID: slot, Requester: "pki", Started: t0}); err != nil {
			t.Fatal(err)
		}
	}
	slot := func(id string, state store.State, updated time.Time, by string) {
		t.Helper()
		if _, err := st.UpdateSlot(id, func(r *store.Slot, _ bool) error {
			r.State, r.UpdatedAt, r.Request = state, updated, by
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Stopped after the slot record: the provisioning happened. The clock stepped
	// back meanwhile (a Pi without a battery-backed clock): the record's own
	// request id tells, not its time.
	put("prov-done", protocol.CmdSlotProvision, "tok/0a")
	slot("tok/0a", store.KeyReady, t0.Add(-time.Hour), "prov-done")
	// Stopped before the slot record of an import: the slot is as it was, written
	// by another request, later by the clock.
	put("import-cut", protocol.CmdSlotImport, "tok/0b")
	slot("tok/0b", store.CSRPending, t0.Add(time.Hour), "csr-earlier")
	// Stopped inside a generation: no slot record at all.
	put("prov-cut", protocol.CmdSlotProvision, "tok/0c")
	// A PIN change: nothing tells whether it landed.
	put("pin", protocol.CmdHSMSetPIN, "")
	// Stopped after its audit record: nothing more is written for it.
	put("clear-audited", protocol.CmdSlotClear, "tok/0d")
	al.Append(audit.Record{RequestID: "clear-audited", Command: protocol.CmdSlotClear, SlotID: "tok/0d", Result: "ok"})
	// A first try answered hsm_offline (recorded, not cached), then a retry under the
	// same id stopped inside: the old record is not the retry's.
	first, _ := al.Append(audit.Record{RequestID: "pin-retry", Command: protocol.CmdHSMSetPIN, Result: "hsm_offline"})
	if err := st.PutIntent("pin-retry", store.Intent{Command: protocol.CmdHSMSetPIN, Requester: "pki", Started: t0, AuditSeq: first.Seq}); err != nil {
		t.Fatal(err)
	}

	rc := &Recovery{Store: st, Audit: al, Now: time.Now, Retention: 24 * time.Hour}
	rc.Intents()
	rc.LostReplies()

	want := map[string]string{"prov-done": "ok", "import-cut": "interrupted", "prov-cut": "interrupted", "pin": "interrupted",
		"clear-audited": "ok", "pin-retry": "interrupted"}
	got := map[string][]audit.Record{}
	for _, r := range al.Tail(0) {
		if r.RequestID == "pin-retry" && r.Result == "hsm_offline" {
			continue // the first try's own record
		}
		got[r.RequestID] = append(got[r.RequestID], r)
	}
	for id, result := range want {
		recs := got[id]
		if len(recs) != 1 {
			t.Errorf("%s: %d audit records, want 1", id, len(recs))
			continue
		}
		r := recs[0]
		if r.Result != result {
			t.Errorf("%s: audit result %q, want %q (note %q)", id, r.Result, result, r.Note)
		}
		if id != "clear-audited" && (r.Requester != "pki" || !strings.Contains(r.Note, "stopped")) {
			t.Errorf("%s: audit record %+v does not say who asked and what happened", id, r)
		}
		rep, err := st.Reply(id)
		if id == "import-cut" || id == "prov-cut" {
			// Nothing landed in the slot record: a redelivery runs.
			if err == nil {
				t.Errorf("%s: interrupted before its slot record, but a redelivery would not run", id)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: no reply marker: %v", id, err)
			continue
		}
		e, lost := LostReply(rep)
		if !lost || e.Code != protocol.CodeConflict || e.Details["audit_seq"] != r.Seq {
			t.Errorf("%s: redelivery answer %v %+v, want conflict naming audit record %d", id, lost, e, r.Seq)
		}
		if interrupted := e.Details["interrupted"] == true; interrupted != (result == "interrupted") {
			t.Errorf("%s: answer says interrupted=%v, audit result %q", id, interrupted, result)
		}
	}
	if left, err := st.Intents(); err != nil || len(left) != 0 {
		t.Errorf("intents left after recovery: %v %v", left, err)
	}
	f, err := os.Open(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n, err := audit.Verify(f); err != nil || n != 7 {
		t.Errorf("audit trail: %d records, %v; want 7, intact", n, err)
	}

	// A second start finds nothing more to do.
	rc.Intents()
	if n := len(al.Tail(0)); n != 7 {
		t.Errorf("%d audit records after a second start, want 7", n)
	}
}

// An intent whose audit record is followed by more records than the trail keeps in
// memory is still found recorded: it gets no second, "interrupted" record, and a
// redelivery is told it ran.
func TestRecoveryReadsTheWholeTrail(t *testing.T) {
	_, st, al := openState(t)
	if err := st.PutIntent("clear-far", store.Intent{Command: protocol.CmdSlotClear, SlotID: "tok/0e", Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	rec, _ := al.Append(audit.Record{RequestID: "clear-far", Command: protocol.CmdSlotClear, SlotID: "tok/0e", Result: "ok"})
	for i := range 300 {
		al.Append(audit.Record{RequestID: fmt.Sprintf("sign-%d", i), Command: protocol.CmdSign, Result: "ok"})
	}
	head := al.Head().Seq

	rc := &Recovery{Store: st, Audit: al, Now: time.Now, Retention: 24 * time.Hour}
	rc.Intents()

	if h := al.Head().Seq; h != head {
		t.Fatalf("%d records were added for a request already recorded", h-head)
	}
	rep, err := st.Reply("clear-far")
	if err != nil {
		t.Fatalf("no answer kept for a redelivery: %v", err)
	}
	if e, lost := LostReply(rep); !lost || e.Details["audit_seq"] != rec.Seq {
		t.Fatalf("redelivery answer %v %+v, want conflict naming audit record %d", lost, e, rec.Seq)
	}
	if left, _ := st.Intents(); len(left) != 0 {
		t.Fatalf("intents left: %v", left)
	}
}

// openState opens a state store and an audit trail in a fresh state directory.
func openState(t *testing.T) (string, *store.Store, *audit.Log) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	al, err := audit.Open(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	return dir, st, al
}

// A reply cached while its audit record was being synced stays when the record made
// it to the trail; when the appliance stopped before the record did, the reply never
// left and is dropped: a redelivery runs again instead of getting a signature the
// trail does not show. A record of the same id from before the batch does not count.
func TestReplyCachedWithoutItsAuditRecordIsDropped(t *testing.T) {
	_, st, al := openState(t)
	al.Append(audit.Record{RequestID: "sign-2", Command: "sign", Result: protocol.CodeUnauthorized})
	rep := func(id string) store.Reply {
		return store.Reply{Digest: []byte{1}, Payload: []byte(`{"id":"` + id + `","ok":true}`), Stored: time.Now()}
	}
	if err := st.CacheReplies(map[string]store.Reply{"sign-1": rep("sign-1"), "sign-2": rep("sign-2")}, al.Head().Seq, nil); err != nil {
		t.Fatal(err)
	}
	al.Append(audit.Record{RequestID: "sign-1", Command: "sign", Result: "ok", Serial: "0a"})

	(&Recovery{Store: st, Audit: al, Now: time.Now, Retention: 24 * time.Hour}).Run()

	if r, err := st.Reply("sign-1"); err != nil || string(r.Payload) != `{"id":"sign-1","ok":true}` {
		t.Fatalf("the reply whose record is in the trail: %q, %v", r.Payload, err)
	}
	if _, err := st.Reply("sign-2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the reply without its record is still cached (%v): a redelivery would get it", err)
	}
	if marks, err := st.Unaudited(); err != nil || len(marks) != 0 {
		t.Fatalf("marks left after recovery: %v, %v", marks, err)
	}
}
