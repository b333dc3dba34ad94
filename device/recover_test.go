package device

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// A request recorded in the audit trail whose reply never reached the cache (the
// appliance was killed between the two) is not run again when redelivered.
func TestLostReplyIsNotRunAgain(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	al, err := audit.Open(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	al.Append(audit.Record{RequestID: "sign-7", Command: "sign", Result: "ok", Serial: "0a"})
	al.Append(audit.Record{RequestID: "sign-8", Command: "sign", Result: "policy_denied"})
	st.PutReply("sign-9", store.Reply{Digest: []byte{1}, Payload: []byte(`{"id":"sign-9","ok":true}`)})
	al.Append(audit.Record{RequestID: "sign-9", Command: "sign", Result: "ok"})

	d := New(Options{DeviceID: "t", Audit: al}, &Slots{Store: st, Registry: NewRegistry()})
	d.recoverLostReplies()

	r, err := st.Reply("sign-7")
	if err != nil {
		t.Fatal(err)
	}
	e, lost := lostReply(r)
	if !lost || e.Code != protocol.CodeConflict || !strings.Contains(e.Message, "audit record 1") {
		t.Fatalf("lost reply: %v %+v", lost, e)
	}
	if _, err := st.Reply("sign-8"); err == nil {
		t.Fatal("a refused request was marked as run")
	}
	if r, _ := st.Reply("sign-9"); string(r.Digest) != "\x01" {
		t.Fatal("a cached reply was overwritten")
	}
}
