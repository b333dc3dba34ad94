package e2e

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/auth"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// controllerPKI issues the certificates of the parties allowed to give orders (with
// the iot-hsm controller extended key usage).
type controllerPKI struct{ *pkitest.ControllerCA }

func newControllerPKI(t *testing.T, name string) *controllerPKI {
	return &controllerPKI{pkitest.NewControllerCA(t, name)}
}

func (p *controllerPKI) issue(t *testing.T, cn string, notAfter time.Time) (crypto.Signer, *x509.Certificate) {
	return p.Issue(t, cn, notAfter)
}

func (p *controllerPKI) bundle() []byte { return p.Bundle() }

func send(t *testing.T, op *operator, a *appliance, cmd string, args any, expires *time.Time, key crypto.Signer, cert *x509.Certificate) protocol.Reply {
	t.Helper()
	raw, _ := json.Marshal(args)
	id := mqtttest.RandomID()
	payload, _ := json.Marshal(protocol.Request{ID: id, ReplyTo: op.ReplyTo, ExpiresAt: expires, Args: raw})
	if key != nil {
		var err error
		if payload, err = auth.Sign(payload, key, []*x509.Certificate{cert}, a.dev.Topics().Cmd(cmd)); err != nil {
			t.Fatal(err)
		}
	}
	op.publish(a.dev.Topics().Cmd(cmd), payload)
	return op.wait(id, 1, time.Minute)
}

func TestSignedRequestsAndAuditTrail(t *testing.T) {
	b := brokers(t)[0]
	trusted, rogue := newControllerPKI(t, "PKI controllers"), newControllerPKI(t, "someone with broker access")
	a := startAppliance(t, b.url, "signed-"+mqtttest.RandomID(), softhsmtest.New(t, "signed"), options{controllers: trusted.bundle()})
	trail := filepath.Join(a.stateDir, "audit.log")
	op := newOperator(t, b.url)
	soon := time.Now().Add(time.Minute).UTC()
	past := time.Now().Add(-time.Minute).UTC()
	key, cert := trusted.issue(t, "pkiaas-controller", time.Now().Add(time.Hour))
	rkey, rcert := rogue.issue(t, "pkiaas-controller", time.Now().Add(time.Hour))
	ekey, ecert := trusted.issue(t, "retired-controller", time.Now().Add(-time.Minute))
	provision := protocol.ProvisionArgs{HSM: a.hsmID, Slot: "01", Mode: "generate", KeyType: "p256"}

	failed(t, send(t, op, a, protocol.CmdSlotProvision, provision, &soon, nil, nil), protocol.CodeUnauthorized)
	failed(t, send(t, op, a, protocol.CmdSlotProvision, provision, &soon, rkey, rcert), protocol.CodeUnauthorized)
	failed(t, send(t, op, a, protocol.CmdSlotProvision, provision, &soon, ekey, ecert), protocol.CodeUnauthorized)
	failed(t, send(t, op, a, protocol.CmdSlotProvision, provision, nil, key, cert), protocol.CodeUnauthorized)
	failed(t, send(t, op, a, protocol.CmdSlotProvision, provision, &past, key, cert), protocol.CodeExpired)
	if got := onToken(t, a); len(got) != 0 {
		t.Fatalf("a refused request generated a key: %v", got)
	}
	res := ok[protocol.ProvisionResult](t, send(t, op, a, protocol.CmdSlotProvision, provision, &soon, key, cert))
	root := ok[protocol.CertificateResult](t, send(t, op, a, protocol.CmdSlotSelfSign,
		protocol.ProvisioningCertArgs{SlotID: res.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Signed Root", 0))}, &soon, key, cert))
	leaf := ok[protocol.SignResult](t, send(t, op, a, protocol.CmdSign, protocol.SignArgs{SlotID: res.SlotID, Kind: protocol.KindCertificate,
		CSR: leafCSR(t, "audited.example.com"), Profile: &protocol.Profile{Validity: "1h"}}, &soon, key, cert))

	// Refusals are sampled: the first of each result at once, the rest counted (in
	// status) and recorded as one record when their minute ends.
	tail := ok[protocol.AuditTailResult](t, send(t, op, a, protocol.CmdAuditTail, protocol.AuditTailArgs{}, &soon, key, cert))
	if len(tail.Records) != 5 {
		t.Fatalf("%d audit records, want 2 sampled refusals + provision + selfsign + sign: %+v", len(tail.Records), tail.Records)
	}
	var results []string
	for _, r := range tail.Records {
		results = append(results, r.Command+":"+r.Result)
	}
	want := "slot.provision:unauthorized slot.provision:expired slot.provision:ok slot.selfsign:ok sign:ok"
	if strings.Join(results, " ") != want {
		t.Fatalf("audit trail:\n got %s\nwant %s", strings.Join(results, " "), want)
	}
	if st := a.dev.Status(); st.Counters.Refused != 5 {
		t.Fatalf("refused counter %d, want 5", st.Counters.Refused)
	}
	last := tail.Records[4]
	if last.Serial != leaf.Serial || !strings.Contains(last.Subject, "audited.example.com") || last.SlotID != res.SlotID ||
		!strings.Contains(last.Requester, "pkiaas-controller") || len(last.Digest) != 64 || last.Hash != tail.Head || last.Prev != tail.Records[3].Hash {
		t.Fatalf("sign record: %+v", last)
	}
	if !strings.Contains(tail.Records[3].Subject, "Signed Root") || root == (protocol.CertificateResult{}) {
		t.Fatalf("selfsign record: %+v", tail.Records[3])
	}

	// The trail verifies offline; a changed record is found.
	f, _ := os.Open(trail)
	n, err := audit.Verify(f)
	f.Close()
	if err != nil || n != 5 {
		t.Fatalf("audit verify: %d, %v", n, err)
	}
	data, _ := os.ReadFile(trail)
	forged := strings.Replace(string(data), leaf.Serial, "01", 1)
	if _, err := audit.Verify(strings.NewReader(forged)); !errors.Is(err, audit.ErrBroken) || !strings.Contains(err.Error(), "line 5") {
		t.Fatalf("a changed serial: %v", err)
	}

	// Someone on the broker takes a signed slot.show and publishes it, unchanged, as
	// slot.clear with destroy_key (the arguments fit): refused, the slot stays.
	raw, _ := json.Marshal(protocol.SlotIDArgs{SlotID: res.SlotID})
	id := mqtttest.RandomID()
	payload, _ := json.Marshal(protocol.Request{ID: id, ReplyTo: op.ReplyTo, ExpiresAt: &soon, Args: raw})
	signed, err := auth.Sign(payload, key, []*x509.Certificate{cert}, a.dev.Topics().Cmd(protocol.CmdSlotShow))
	if err != nil {
		t.Fatal(err)
	}
	op.publish(a.dev.Topics().Cmd(protocol.CmdSlotClear), signed)
	failed(t, op.wait(id, 1, time.Minute), protocol.CodeUnauthorized)
	show := ok[protocol.SlotShow](t, send(t, op, a, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: res.SlotID}, &soon, key, cert))
	if show.State != "provisioned" {
		t.Fatalf("after a replayed request: slot %s", show.State)
	}

	// A signed request that would outlive the reply cache could be replayed once its
	// reply is pruned: refused.
	later := time.Now().Add(48 * time.Hour).UTC()
	r := send(t, op, a, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: res.SlotID}, &later, key, cert)
	failed(t, r, protocol.CodeUnauthorized)
	if !strings.Contains(r.Error.Message, "expire within") {
		t.Fatalf("a request expiring in 48h: %s", r.Error.Message)
	}

	// At the stop, the refusals counted since the first of their minute are one
	// record: 3 more unauthorized after the first, then the replayed and the
	// far-expiring ones.
	a.stop()
	recs := auditRecords(t, trail)
	closing := recs[len(recs)-1]
	if closing.Result != protocol.CodeUnauthorized || !strings.Contains(closing.Note, "5 more requests refused unauthorized") {
		t.Fatalf("closing record of the refusals: %+v", closing)
	}
}

// auditRecords reads a whole audit trail.
func auditRecords(t *testing.T, path string) []audit.Record {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Record
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}
