package device

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// Exec takes the MQTT intake: the same routing and typed errors, the same audit
// records with the dashboard's user as requester, and nothing published.
func TestExecSharesTheIntake(t *testing.T) {
	log, err := audit.Open(filepath.Join(t.TempDir(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	var updates int
	d, tr, c := startDevice(t, Options{Audit: log, OTA: OTAHooks{
		Update: func(protocol.OTAUpdateArgs) (any, error) { updates++; return protocol.OTAStatus{}, nil },
		Status: func() any { return protocol.OTAStatus{} },
	}})
	ctx := context.Background()
	rep, err := d.Exec(ctx, protocol.CmdSlotProvision, "admin", protocol.ProvisionArgs{HSM: c.hsmID, Slot: "01", Mode: "generate", KeyType: "p256"})
	if err != nil || !rep.OK {
		t.Fatalf("provision: %+v %v", rep, err)
	}
	// The same typed refusal an MQTT client gets.
	rep, err = d.Exec(ctx, protocol.CmdSlotProvision, "admin", protocol.ProvisionArgs{HSM: c.hsmID, Slot: "01", Mode: "generate", KeyType: "p256"})
	if err != nil || rep.Error == nil || rep.Error.Code != protocol.CodeConflict {
		t.Fatalf("provision again: %+v %v, want conflict", rep, err)
	}
	rep, _ = d.Exec(ctx, protocol.CmdSlotShow, "admin", protocol.SlotIDArgs{SlotID: "nosuch/01"})
	if rep.Error == nil || rep.Error.Code != protocol.CodeNotFound {
		t.Fatalf("unknown slot: %+v, want not_found", rep.Error)
	}
	// A dashboard user is no controller: allow_downgrade stays refused.
	rep, _ = d.Exec(ctx, protocol.CmdOTAUpdate, "admin", protocol.OTAUpdateArgs{URL: "http://x/old", SHA256: "ab", Size: 3, Signature: "s", AllowDowngrade: true})
	if rep.Error == nil || rep.Error.Code != protocol.CodeUnauthorized || updates != 0 {
		t.Fatalf("allow_downgrade from the dashboard: %+v, updates %d", rep.Error, updates)
	}
	var got []string
	for _, r := range log.Tail(0) {
		got = append(got, r.Requester+" "+r.Command+" "+r.Result)
	}
	want := "web:admin slot.provision ok|web:admin slot.provision conflict|web:admin ota.update unauthorized"
	if strings.Join(got, "|") != want {
		t.Fatalf("audit trail %q, want %q", strings.Join(got, "|"), want)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for topic, msgs := range tr.out {
		for _, m := range msgs {
			if strings.HasPrefix(topic, localPrefix) || strings.Contains(string(m), `"id":"local-`) {
				t.Fatalf("a local reply went to the broker on %q: %s", topic, m)
			}
		}
	}
}

// No request from the broker can name a local reply topic.
func TestLocalReplyTopicUnreachableFromMQTT(t *testing.T) {
	_, perr := protocol.DecodeRequest([]byte(`{"id":"x1","reply_to":"\u0000local/local-abc"}`))
	if perr == nil || perr.Code != protocol.CodeBadRequest {
		t.Fatalf("reply_to with a NUL: %v, want bad_request", perr)
	}
}
