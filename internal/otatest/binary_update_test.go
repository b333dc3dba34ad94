package otatest

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// TestBinaryUpdate: v1 runs; a v2 whose download is cut halfway resumes and is
// committed; a wrong hash, a signature by an unknown key and one that names no
// version are refused before the binary changes; v1, validly signed, is then refused
// as a downgrade; a v3 that never becomes healthy is rolled back to v2 by itself.
// The slots and the reply cache are the same after the update and after the rollback.
func TestBinaryUpdate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the daemon three times")
	}
	work := t.TempDir()
	v1 := build(t, work, "v1.0.0", "")
	v2 := build(t, work, "v2.0.0", "")
	v3 := build(t, work, "v3.0.0-broken", "-X github.com/iot-hsm/iot-hsm/ota.testHealth=never")
	v2data, _ := os.ReadFile(v2)
	v3data, _ := os.ReadFile(v3)

	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, strangerKey, _ := minisign.GenerateKey(rand.Reader)
	pubText, _ := pub.MarshalText()

	// The installed binary, which updates replace.
	bin := filepath.Join(work, "installed", "iot-hsm")
	os.MkdirAll(filepath.Dir(bin), 0o755)
	v1data, _ := os.ReadFile(v1)
	if err := os.WriteFile(bin, v1data, 0o755); err != nil {
		t.Fatal(err)
	}
	deviceID := "ihsm-ota-" + mqtttest.RandomID()
	listen := fmt.Sprintf("127.0.0.1:%d", brokertest.FreePort(t))
	cfg := filepath.Join(work, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`device_id = %q
[service]
broker_wait = "2s"
stop_timeout = "3s"
[ota]
mode = "binary"
public_keys = [%q]
window = "8s"
binary = %q
`, deviceID, string(pubText), bin)), 0o600)
	state := filepath.Join(work, "state")
	sup := supervise(t, bin, []string{"run", "--dev", "--config", cfg, "--state-dir", state, "--dev-listen", listen})
	op := newOperator(t, "tcp://"+listen, deviceID)
	op.waitOTA("v1.0.0", protocol.OTAIdle, 60*time.Second)

	// State to carry through: a provisioned key, and a cached reply.
	hsms := decode[protocol.HSMListResult](t, op.call(protocol.CmdHSMList, nil))
	if len(hsms.HSMs) == 0 {
		t.Fatal("no HSM in --dev mode")
	}
	provID := "prov-" + mqtttest.RandomID()
	provArgs := protocol.ProvisionArgs{HSM: hsms.HSMs[0].ID, Slot: "01", Mode: "generate", KeyType: "p256", Label: "ota"}
	prov := op.callID(provID, protocol.CmdSlotProvision, provArgs, time.Minute)
	decode[protocol.ProvisionResult](t, prov)
	slotsBefore := slots(t, op)

	srv := newServer(t)

	// Refused before anything is replaced: a wrong hash, then an unknown signer.
	before := fileSHA(t, bin)
	url := srv.put("/v2-badhash", v2data, false)
	refuse(t, op, protocol.OTAUpdateArgs{URL: url, SHA256: strings.Repeat("ab", 32), Size: int64(len(v2data)), Signature: sign(t, priv, v2data, "v2.0.0")}, "SHA-256")
	url = srv.put("/v2-stranger", v2data, false)
	refuse(t, op, protocol.OTAUpdateArgs{URL: url, SHA256: sha(v2data), Size: int64(len(v2data)), Signature: sign(t, strangerKey, v2data, "v2.0.0")}, "not among ota.public_keys")
	tampered := append([]byte(nil), v2data...)
	tampered[len(tampered)/3] ^= 1
	url = srv.put("/v2-tampered", tampered, false)
	refuse(t, op, protocol.OTAUpdateArgs{URL: url, SHA256: sha(tampered), Size: int64(len(tampered)), Signature: sign(t, priv, v2data, "v2.0.0")}, "does not verify")
	url = srv.put("/v2-noversion", v2data, false)
	refuse(t, op, protocol.OTAUpdateArgs{URL: url, SHA256: sha(v2data), Size: int64(len(v2data)), Signature: sign(t, priv, v2data, "")}, "carries no version")
	if got := fileSHA(t, bin); got != before {
		t.Fatal("a refused update changed the installed binary")
	}
	if _, err := os.Stat(bin + ".prev"); err == nil {
		t.Fatal("a refused update left a previous binary: something was swapped")
	}

	// The good update, its download cut halfway once.
	url = srv.put("/v2", v2data, true)
	r := op.call(protocol.CmdOTAUpdate, protocol.OTAUpdateArgs{URL: url, SHA256: sha(v2data), Size: int64(len(v2data)), Signature: sign(t, priv, v2data, "v2.0.0")})
	decode[protocol.OTAStatus](t, r)
	st := op.waitOTA("v2.0.0", protocol.OTACommitted, 90*time.Second)
	if st.Previous != "v1.0.0" {
		t.Errorf("previous version %q, want v1.0.0", st.Previous)
	}
	srv.mu.Lock()
	ranges := append([]string(nil), srv.ranges...)
	srv.mu.Unlock()
	if len(ranges) == 0 || !strings.HasPrefix(ranges[0], "/v2 bytes=") {
		t.Errorf("the cut download was not resumed with a Range request; ranges asked: %v", ranges)
	}
	if fileSHA(t, bin) != sha(v2data) || fileSHA(t, bin+".prev") != sha(v1data) {
		t.Error("after the update the binary is not v2 with v1 kept as .prev")
	}
	// Events before the restart; committed comes from the new process, maybe before
	// this client is back on the restarted broker: ota.status showed it above. The
	// reboot event is the last thing the old process says, through the embedded
	// broker that dies with it, so it may not reach this client: not required.
	for _, p := range []string{protocol.OTADownload, protocol.OTAVerify, protocol.OTAInstall} {
		if !contains(op.phases(), p) {
			t.Errorf("no %s event; events: %v", p, op.phases())
		}
	}
	sameState(t, op, "after the update", slotsBefore, provID, provArgs, prov)
	noDowngrade(t, op, srv, priv, v1data, bin, state)

	// An update that never becomes healthy: rolled back within the window.
	url = srv.put("/v3", v3data, false)
	r = op.call(protocol.CmdOTAUpdate, protocol.OTAUpdateArgs{URL: url, SHA256: sha(v3data), Size: int64(len(v3data)), Signature: sign(t, priv, v3data, "v3.0.0-broken")})
	decode[protocol.OTAStatus](t, r)
	st = op.waitOTA("v2.0.0", protocol.OTARolledBack, 120*time.Second)
	if !strings.Contains(st.Error, "not healthy") {
		t.Errorf("rollback reason %q", st.Error)
	}
	if !strings.Contains(sup.log.String(), "v3.0.0-broken") {
		t.Error("the broken version never ran")
	}
	if fileSHA(t, bin) != sha(v2data) {
		t.Error("after the rollback the binary is not v2")
	}
	if !contains(op.phases(), protocol.OTATrial) {
		t.Errorf("events: %v", op.phases())
	}
	sameState(t, op, "after the rollback", slotsBefore, provID, provArgs, prov)
}

// noDowngrade: v1, validly signed, is older than the running v2: refused, the binary
// stays v2, and the committed v1 -> v2 raised the floor to v1. Without a trusted
// controllers bundle no request may carry allow_downgrade.
func noDowngrade(t *testing.T, op *operator, srv *server, priv minisign.PrivateKey, v1data []byte, bin, state string) {
	t.Helper()
	before := fileSHA(t, bin)
	a := protocol.OTAUpdateArgs{URL: srv.put("/v1", v1data, false), SHA256: sha(v1data), Size: int64(len(v1data)),
		Signature: sign(t, priv, v1data, "v1.0.0")}
	st := refuse(t, op, a, "v1.0.0 is older than the running v2.0.0")
	if st.ErrorCode != protocol.CodePolicyDenied || fileSHA(t, bin) != before {
		t.Errorf("the downgrade: error code %q, binary unchanged: %v", st.ErrorCode, fileSHA(t, bin) == before)
	}
	wantFloor(t, state, "v1.0.0")
	a.AllowDowngrade = true
	if r := op.call(protocol.CmdOTAUpdate, a); r.OK || r.Error.Code != protocol.CodeUnauthorized {
		t.Errorf("allow_downgrade in an unsigned request: %+v", r.Error)
	}
}

// wantFloor: the minimum version on the data partition is want.
func wantFloor(t *testing.T, state, want string) {
	t.Helper()
	if b, _ := os.ReadFile(filepath.Join(state, "ota", "min_version")); string(b) != want+"\n" {
		t.Errorf("min_version is %q, want %s", b, want)
	}
}

func refuse(t *testing.T, op *operator, a protocol.OTAUpdateArgs, want string) protocol.OTAStatus {
	t.Helper()
	r := op.call(protocol.CmdOTAUpdate, a)
	decode[protocol.OTAStatus](t, r)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st := decode[protocol.OTAStatus](t, op.call(protocol.CmdOTAStatus, nil))
		if st.Phase == protocol.OTAFailed {
			if !strings.Contains(st.Error, want) {
				t.Fatalf("refused with %q, want it to mention %q", st.Error, want)
			}
			t.Logf("refused as it should: %s", st.Error)
			return st
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("update %s not refused", a.URL)
	return protocol.OTAStatus{}
}

func slots(t *testing.T, op *operator) []protocol.StatusSlot {
	st := decode[protocol.Status](t, op.call(protocol.CmdStatus, nil))
	return st.Slots
}

// sameState: the slots are as they were, and the cached reply is replayed as it was.
func sameState(t *testing.T, op *operator, when string, before []protocol.StatusSlot, id string, args protocol.ProvisionArgs, first protocol.Reply) {
	t.Helper()
	if got := slots(t, op); !reflect.DeepEqual(got, before) {
		t.Errorf("%s the slots differ:\n got %+v\nwant %+v", when, got, before)
	}
	again := op.callID(id, protocol.CmdSlotProvision, args, time.Minute)
	if !again.Replayed || string(again.Result) != string(first.Result) {
		a, _ := json.Marshal(again)
		t.Errorf("%s the reply cache lost the provision reply: %s", when, a)
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
