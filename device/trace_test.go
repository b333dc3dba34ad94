package device

import (
	"crypto/sha256"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// With a Trace, a signed digest reports each of its steps with its wall time, the
// token's signature inside the command's run; the reply is as without one.
func TestTraceNamesTheStepsOfASign(t *testing.T) {
	var mu sync.Mutex
	took := map[string]time.Duration{}
	n := map[string]int{}
	d, tr, c := startDevice(t, Options{AllowDigest: true, Trace: func(step string, dur time.Duration) {
		mu.Lock()
		took[step] += dur
		n[step]++
		mu.Unlock()
	}})
	if rep := call(t, d, tr, protocol.CmdSlotProvision, "gen",
		protocol.ProvisionArgs{HSM: c.hsmID, Slot: "01", Mode: slots.ModeGenerate, KeyType: "p256"}); !rep.OK {
		t.Fatalf("generate: %+v", rep.Error)
	}
	rep := call(t, d, tr, protocol.CmdSlotSelfSign, "root",
		protocol.ProvisioningCertArgs{SlotID: c.hsmID + "/01", ProvisioningCert: string(provisioningCert(t, "Trace Root", 1))})
	var cert protocol.CertificateResult
	if !rep.OK || json.Unmarshal(rep.Result, &cert) != nil {
		t.Fatalf("self-sign: %+v", rep.Error)
	}
	rec, err := c.slots.Store.Slot(c.hsmID + "/01")
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	clear(took)
	clear(n)
	mu.Unlock()

	digest := sha256.Sum256([]byte("traced"))
	if rep := call(t, d, tr, protocol.CmdSign, "sig",
		protocol.SignArgs{CAID: rec.CAID, Kind: protocol.KindDigest, Digest: digest[:], Hash: "sha256"}); !rep.OK {
		t.Fatalf("sign: %+v", rep.Error)
	}
	// The publish step ends after the reply has left.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		published := n[StepPublish]
		mu.Unlock()
		if published > 0 {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, step := range []string{StepRun, StepSign, StepVerify, StepRecord, StepPublish} {
		if n[step] != 1 || took[step] <= 0 {
			t.Errorf("step %s: reported %d times, %s in all; want once, with its time", step, n[step], took[step])
		}
	}
	if took[StepSign] > took[StepRun] {
		t.Errorf("the token's signature (%s) took longer than the run around it (%s)", took[StepSign], took[StepRun])
	}
}
