package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

func TestDuplicateIDIsAnsweredFromTheCache(t *testing.T) {
	for _, b := range brokers(t) {
		t.Run(b.name, func(t *testing.T) {
			a := startAppliance(t, b.url, "dup-"+b.name, softhsmtest.New(t, "dup"), options{})
			op := newOperator(t, b.url)
			args := protocol.ProvisionArgs{HSM: a.hsmID, Slot: "0a", Mode: "generate", KeyType: "p256"}
			id, payload := op.envelope("provision-0a", args)
			topic := a.dev.Topics().Cmd(protocol.CmdSlotProvision)
			op.publish(topic, payload)
			first := op.wait(id, 1, time.Minute)
			op.publish(topic, payload) // a QoS 1 redelivery, or a client's retry
			second := op.wait(id, 2, time.Minute)
			if !first.OK || first.Replayed || !second.Replayed || !bytes.Equal(first.Result, second.Result) {
				t.Fatalf("first %+v\nsecond %+v", first, second)
			}
			if slots := onToken(t, a); len(slots) != 1 {
				t.Fatalf("%d keys on the token after a duplicate provision, want 1", len(slots))
			}

			// A duplicate sign returns the same certificate and issues no second one.
			pub := ok[protocol.ProvisionResult](t, first)
			cert := ok[protocol.CertificateResult](t, op.call(a, protocol.CmdSlotSelfSign, protocol.ProvisioningCertArgs{SlotID: pub.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Dup Root", 0))}))
			_ = cert
			sid, sp := op.envelope("sign-1", protocol.SignArgs{SlotID: pub.SlotID, Kind: protocol.KindCertificate, CSR: leafCSR(t, "a.example.com"),
				Profile: &protocol.Profile{Validity: "24h", ExtKeyUsage: []string{"server_auth"}}})
			op.publish(a.dev.Topics().Cmd(protocol.CmdSign), sp)
			s1 := ok[protocol.SignResult](t, op.wait(sid, 1, time.Minute))
			op.publish(a.dev.Topics().Cmd(protocol.CmdSign), sp)
			s2r := op.wait(sid, 2, time.Minute)
			s2 := ok[protocol.SignResult](t, s2r)
			if !s2r.Replayed || s1.Certificate != s2.Certificate || s1.Serial != s2.Serial {
				t.Fatal("a repeated sign did not return the first certificate")
			}

			// A repeat that arrives after its expires_at still gets the stored
			// reply: nothing runs, and a PKI that lost the first reply gets its
			// certificate. A new request that late is expired.
			soon := time.Now().Add(time.Second).UTC()
			raw, _ := json.Marshal(protocol.SignArgs{SlotID: pub.SlotID, Kind: protocol.KindCertificate, CSR: leafCSR(t, "late.example.com"),
				Profile: &protocol.Profile{Validity: "24h"}})
			lp, _ := json.Marshal(protocol.Request{ID: "sign-late", ReplyTo: op.ReplyTo, ExpiresAt: &soon, Args: raw})
			op.publish(a.dev.Topics().Cmd(protocol.CmdSign), lp)
			l1 := ok[protocol.SignResult](t, op.wait("sign-late", 1, time.Minute))
			time.Sleep(time.Until(soon) + 100*time.Millisecond)
			op.publish(a.dev.Topics().Cmd(protocol.CmdSign), lp)
			l2r := op.wait("sign-late", 2, time.Minute)
			if l2 := ok[protocol.SignResult](t, l2r); !l2r.Replayed || l2.Serial != l1.Serial {
				t.Fatalf("a late repeat: replayed %v, serial %s, want the stored reply with %s", l2r.Replayed, l2.Serial, l1.Serial)
			}
			late, _ := json.Marshal(protocol.Request{ID: "sign-late-new", ReplyTo: op.ReplyTo, ExpiresAt: &soon, Args: raw})
			op.publish(a.dev.Topics().Cmd(protocol.CmdSign), late)
			failed(t, op.wait("sign-late-new", 1, time.Minute), protocol.CodeExpired)
			st := ok[protocol.Status](t, op.call(a, protocol.CmdStatus, struct{}{}))
			if st.Counters.Signatures != 2 {
				t.Fatalf("%d signatures counted, want 2 (sign-1 and sign-late, once each)", st.Counters.Signatures)
			}

			// The same id with other content is a conflict, and runs nothing.
			_, other := op.envelope("provision-0a", protocol.ProvisionArgs{HSM: a.hsmID, Slot: "0b", Mode: "generate", KeyType: "p256"})
			op.publish(topic, other)
			failed(t, op.wait("provision-0a", 3, time.Minute), protocol.CodeConflict)
			if slots := onToken(t, a); len(slots) != 1 {
				t.Fatalf("a conflicting request generated a key")
			}
		})
	}
}

func onToken(t *testing.T, a *appliance) []string {
	t.Helper()
	tok, err := a.app.Registry.Token(a.hsmID)
	if err != nil {
		t.Fatal(err)
	}
	slots, err := tok.Slots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range slots {
		out = append(out, s.Slot)
	}
	return out
}

func TestBadRequestsGetTheirCodeAndChangeNothing(t *testing.T) {
	for _, b := range brokers(t) {
		t.Run(b.name, func(t *testing.T) {
			a := startAppliance(t, b.url, "bad-"+b.name, softhsmtest.New(t, "bad"), options{})
			op := newOperator(t, b.url)
			root, interm, rootPEM, _ := provisionCAs(t, op, a)
			// A third slot waiting for its certificate: wrong-state target.
			pending := ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
				protocol.ProvisionArgs{HSM: a.hsmID, Slot: "03", Mode: "generate", KeyType: "p256"}))
			before, _ := a.app.Store.Slots()
			keysBefore := onToken(t, a)
			cmd := a.dev.Topics().Cmd

			raw := func(topic string, payload string) protocol.Reply {
				t.Helper()
				id := strings.Split(payload, `"`)[3] // every payload below starts with {"id":"...
				op.publish(topic, []byte(payload))
				return op.wait(id, 1, time.Minute)
			}
			past := time.Now().Add(-time.Second).UTC().Format(time.RFC3339)

			failed(t, raw(cmd("status"), `{"id":"exp-1","reply_to":"`+op.ReplyTo+`","expires_at":"`+past+`"}`), protocol.CodeExpired)
			failed(t, raw(cmd("status"), `{"id":"bad-json","reply_to":"`+op.ReplyTo+`","args":[1,2}`), protocol.CodeBadRequest)
			failed(t, raw(cmd("slot.provision"), `{"id":"bad-field","reply_to":"`+op.ReplyTo+`","args":{"hsm":"`+a.hsmID+`","slot":"09","mode":"generate","key_type":"p256","colour":"red"}}`), protocol.CodeBadRequest)
			failed(t, raw(cmd("slot.provision"), `{"id":"bad-type","reply_to":"`+op.ReplyTo+`","args":{"hsm":"`+a.hsmID+`","slot":"09","mode":"generate","key_type":"ed25519"}}`), protocol.CodeBadRequest)
			big := `{"id":"too-big","reply_to":"` + op.ReplyTo + `","args":{"pad":"` + strings.Repeat("x", protocol.MaxPayload) + `"}}`
			failed(t, raw(cmd("status"), big), protocol.CodeBadRequest)
			failed(t, raw(cmd("frobnicate"), `{"id":"unknown-cmd","reply_to":"`+op.ReplyTo+`"}`), protocol.CodeUnknownCommand)
			failed(t, op.call(a, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: a.hsmID + "/7e"}), protocol.CodeNotFound)
			failed(t, op.call(a, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: "nohsm/01"}), protocol.CodeNotFound)
			failed(t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: pending.SlotID, Kind: protocol.KindCertificate, CSR: leafCSR(t, "x.example.com"), Profile: &protocol.Profile{Validity: "1h"}}), protocol.CodeConflict)
			failed(t, op.call(a, protocol.CmdSlotSelfSign, protocol.ProvisioningCertArgs{SlotID: root.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "again", 1))}), protocol.CodeConflict)

			// CSR whose signature does not verify: one bit of the signature flipped.
			blk, _ := pem.Decode([]byte(leafCSR(t, "y.example.com")))
			blk.Bytes[len(blk.Bytes)-3] ^= 0x01
			failed(t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: interm.SlotID, Kind: protocol.KindCertificate, CSR: string(pem.EncodeToMemory(blk)), Profile: &protocol.Profile{Validity: "1h"}}), protocol.CodePolicyDenied)
			// Validity beyond the CA's.
			far := time.Now().Add(100 * 365 * 24 * time.Hour).UTC()
			failed(t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: interm.SlotID, Kind: protocol.KindCertificate, CSR: leafCSR(t, "z.example.com"), Profile: &protocol.Profile{NotAfter: &far}}), protocol.CodePolicyDenied)
			// A CA under an issuer with path length 0.
			failed(t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: interm.SlotID, Kind: protocol.KindCertificate, CSR: leafCSR(t, "sub.example.com"), Profile: &protocol.Profile{Validity: "1h", IsCA: true}}), protocol.CodePolicyDenied)
			// A name outside the CA's name constraints.
			failed(t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: interm.SlotID, Kind: protocol.KindCertificate, CSR: leafCSR(t, "evil.example.org"), Profile: &protocol.Profile{Validity: "1h"}}), protocol.CodePolicyDenied)
			// Raw digests are off unless configured.
			failed(t, op.call(a, protocol.CmdSign, protocol.SignArgs{SlotID: interm.SlotID, Kind: protocol.KindDigest, Digest: make([]byte, 32), Hash: "sha256"}), protocol.CodePolicyDenied)
			// A certificate for another key.
			failed(t, op.call(a, protocol.CmdSlotImport, protocol.ImportCertArgs{SlotID: pending.SlotID, Certificate: rootPEM}), protocol.CodeBadRequest)

			after, _ := a.app.Store.Slots()
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("refused requests changed slot state")
			}
			if got := onToken(t, a); !reflect.DeepEqual(got, keysBefore) {
				t.Fatalf("refused requests changed the token: %v -> %v", keysBefore, got)
			}
			// Still serving.
			ok[protocol.Status](t, op.call(a, protocol.CmdStatus, struct{}{}))
			_ = store.Provisioned
		})
	}
}

func TestFullQueueAnswersBusy(t *testing.T) {
	b := brokers(t)[1]
	a := startAppliance(t, b.url, "busy", softhsmtest.New(t, "busy"), options{queueSize: 1})
	op := newOperator(t, b.url)
	// RSA-4096 generation keeps the token's worker busy for a while.
	var ids []string
	for i := 0; i < 6; i++ {
		id, p := op.envelope("", protocol.ProvisionArgs{HSM: a.hsmID, Slot: []string{"11", "12", "13", "14", "15", "16"}[i], Mode: "generate", KeyType: "rsa4096"})
		op.publish(a.dev.Topics().Cmd(protocol.CmdSlotProvision), p)
		ids = append(ids, id)
	}
	busy, done := 0, 0
	for _, id := range ids {
		r := op.wait(id, 1, 3*time.Minute)
		switch {
		case r.OK:
			done++
		case r.Error.Code == protocol.CodeBusy:
			busy++
		default:
			t.Fatalf("unexpected reply %+v", r.Error)
		}
	}
	if busy == 0 || done == 0 {
		t.Fatalf("%d done, %d busy: want both with a queue of 1", done, busy)
	}
	if got := len(onToken(t, a)); got != done {
		t.Fatalf("%d keys on the token, %d provisions answered ok", got, done)
	}
}
