package e2e

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/protocol"
)

const testClaimWindow = 30 * time.Second

// caRequest is a sign request for a CA topic expiring lead from now; no expires_at
// when lead is 0.
func caRequest(op *operator, id string, lead time.Duration, args protocol.SignArgs) []byte {
	raw, _ := json.Marshal(args)
	req := protocol.Request{ID: id, ReplyTo: op.ReplyTo, Args: raw}
	if lead != 0 {
		exp := time.Now().Add(lead).UTC()
		req.ExpiresAt = &exp
	}
	b, _ := json.Marshal(req)
	return b
}

// fleetRoot starts a fleet member with a root CA generated in slot 01.
func fleetRoot(t *testing.T, url, name string) (*appliance, *operator, protocol.ProvisionResult) {
	t.Helper()
	a := startAppliance(t, url, name, softhsmtest.New(t, name),
		options{fleet: config.Fleet{Enabled: true, ClaimWindow: testClaimWindow}})
	op := newOperator(t, url)
	root := ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: a.hsmID, Slot: "01", Mode: "generate", KeyType: "p256", Label: "root"}))
	ok[protocol.CertificateResult](t, op.call(a, protocol.CmdSlotSelfSign,
		protocol.ProvisioningCertArgs{SlotID: root.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Fleet Root", 0))}))
	return a, op, root
}

// errorCode fails the test unless r is an error with that code.
func errorCode(t *testing.T, r protocol.Reply, code string) *protocol.Error {
	t.Helper()
	if r.OK || r.Error == nil || r.Error.Code != code {
		t.Fatalf("want %s, got ok=%v error=%+v", code, r.OK, r.Error)
	}
	return r.Error
}

// TestFleetClaims: a fleet member signs a CA topic request only with expires_at within
// the claim window, never an id another member claimed first, and leaves its own claim
// retained for the others; after the broker lost its state it signs no request that
// may be older than the loss, and signs the newer ones.
func TestFleetClaims(t *testing.T) {
	mos := brokertest.StartMosquitto(t)
	a, op, root := fleetRoot(t, mos.URL, "fleet-claims")
	topics := a.dev.Topics()
	caTopic := topics.CASign(root.CAID)
	args := protocol.SignArgs{Kind: protocol.KindCertificate, CSR: leafCSR(t, "node.example.com"), Profile: &protocol.Profile{Validity: "1h"}}
	obs := mqtttest.Start(t, mos.URL, mqtttest.Options{Name: "obs", Watch: []string{topics.CAFleetFilter(root.CAID)}})

	for _, lead := range []time.Duration{0, time.Hour} {
		id := mqtttest.RandomID()
		op.publish(caTopic, caRequest(op, id, lead, args))
		errorCode(t, op.wait(id, 1, 30*time.Second), protocol.CodeBadRequest)
	}

	// Another member's claim, seen before the request: never signed here.
	taken := mqtttest.RandomID()
	claim, _ := json.Marshal(protocol.Claim{ExpiresAt: time.Now().Add(testClaimWindow).UTC(), Nonce: "other"})
	mqtttest.Publish(t, obs.MQTT, topics.CAClaim(root.CAID, "ihsm-other", taken), claim, true)
	op.publish(caTopic, caRequest(op, taken, testClaimWindow, args))
	if e := errorCode(t, op.wait(taken, 1, 30*time.Second), protocol.CodeClaimed); e.Details["claimed_by"] != "ihsm-other" {
		t.Fatalf("claimed details: %v", e.Details)
	}

	// A free id is signed, and this member's claim on it stays for the others.
	free := mqtttest.RandomID()
	op.publish(caTopic, caRequest(op, free, testClaimWindow, args))
	ok[protocol.SignResult](t, op.wait(free, 1, 30*time.Second))
	obs.WaitFor(t, topics.CAClaim(root.CAID, a.id, free), "expires_at")

	// The broker restarts without its state: the member marks the claims lost.
	mos.Stop()
	mos.Start(t)
	lost := mqtttest.Start(t, mos.URL, mqtttest.Options{Name: "obs2", Watch: []string{topics.CAEpoch(root.CAID)}})
	lost.WaitFor(t, topics.CAEpoch(root.CAID), `"lost":true`)
	for !op.MQTT.Connected() {
		time.Sleep(10 * time.Millisecond)
	}
	// Expiring within the window after the loss, it may have been sent before it.
	old := mqtttest.RandomID()
	op.publish(caTopic, caRequest(op, old, 5*time.Second, args))
	if e := errorCode(t, op.wait(old, 1, 30*time.Second), protocol.CodeClaimed); e.Details["claims_lost"] != true {
		t.Fatalf("claimed details: %v", e.Details)
	}
	fresh := mqtttest.RandomID()
	op.publish(caTopic, caRequest(op, fresh, testClaimWindow, args))
	ok[protocol.SignResult](t, op.wait(fresh, 1, 30*time.Second))

	time.Sleep(500 * time.Millisecond) // a late second answer would arrive meanwhile
	for _, id := range []string{taken, old} {
		for _, r := range op.Replies(id) {
			if r.OK {
				t.Errorf("request %s was signed", id)
			}
		}
	}
}
