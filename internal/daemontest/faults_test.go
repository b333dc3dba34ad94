package daemontest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// TestFaultBrokerRestartUnderLoad: mosquitto is killed (SIGKILL, no persistence) and
// started again while 500 sign requests flow. The PKI publishes each request until the
// broker takes it and asks again, under the same id, for the ones whose reply it did
// not see. Every request ends with one outcome: no id is signed twice (one audit
// record with result ok per id, 500 distinct serials, the serial the PKI got), a
// request published once is answered once, and the daemon is the same process
// throughout.
func TestFaultBrokerRestartUnderLoad(t *testing.T) {
	mos := brokertest.StartMosquitto(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	dev := "ihsm-fault-" + mqtttest.RandomID()
	d := startDaemonIn(t, dir, state, dev, mos.URL)
	o := newFop(t, mos.URL, dev)
	st := o.waitOnline(60 * time.Second)
	root, _ := makeRoot(t, o, hsmID(t, st))
	pid := d.cmd.Process.Pid

	const n = 500
	args := signArgs(t, root.SlotID)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = mqtttest.RandomID()
	}
	sends := make([]atomic.Int32, n)
	var sent atomic.Int32
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		for i, id := range ids {
			for {
				sends[i].Add(1)
				if o.trySend(id, protocol.CmdSign, args) == nil {
					break
				}
				// The broker is down: the same request again, until it takes it.
				time.Sleep(100 * time.Millisecond)
			}
			sent.Add(1)
			time.Sleep(4 * time.Millisecond)
		}
	}()

	// Kill the broker while requests and replies are in flight.
	for sent.Load() < n/4 {
		time.Sleep(5 * time.Millisecond)
	}
	mos.Stop()
	t.Logf("broker killed after %d requests published", sent.Load())
	time.Sleep(time.Second)
	mos.Start(t)
	<-senderDone

	// Ask again, under the same id, for what got no reply.
	deadline := time.Now().Add(90 * time.Second)
	for {
		time.Sleep(3 * time.Second)
		var missing []int
		for i, id := range ids {
			if len(o.got(id)) == 0 {
				missing = append(missing, i)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests still without a reply after retries", len(missing))
		}
		t.Logf("%d requests without a reply: sent again under the same id", len(missing))
		for _, i := range missing {
			sends[i].Add(1)
			o.sendRetry(ids[i], protocol.CmdSign, args, 30*time.Second)
		}
	}
	time.Sleep(time.Second) // any duplicate reply arrives meanwhile

	if !d.running() || d.cmd.Process.Pid != pid {
		t.Fatal("the daemon did not survive the broker restart")
	}
	if c := strings.Count(d.log.String(), "iot-hsm running"); c != 1 {
		t.Fatalf("the daemon started %d times", c)
	}
	st2 := decode[protocol.Status](t, o.call(protocol.CmdStatus, nil))
	if st.StartedAt == nil || st2.StartedAt == nil || !st.StartedAt.Equal(*st2.StartedAt) {
		t.Fatalf("started_at changed: %v, then %v", st.StartedAt, st2.StartedAt)
	}

	serials := map[string]string{} // id -> serial the PKI got
	resent, replayed := 0, 0
	for i, id := range ids {
		rs := o.got(id)
		fresh := 0
		for _, r := range rs {
			res := decode[protocol.SignResult](t, r)
			if s, ok := serials[id]; ok && s != res.Serial {
				t.Errorf("request %s answered with two serials: %s and %s", id, s, res.Serial)
			}
			serials[id] = res.Serial
			if r.Replayed {
				replayed++
			} else {
				fresh++
			}
		}
		if fresh > 1 {
			t.Errorf("request %s ran %d times (replies not marked replayed)", id, fresh)
		}
		if sends[i].Load() > 1 {
			resent++
		} else if len(rs) != 1 {
			t.Errorf("request %s, published once, got %d replies", id, len(rs))
		}
	}
	t.Logf("%d requests, %d published more than once, %d replayed replies", n, resent, replayed)

	recs := auditRecords(t, state)
	byID := okSigns(recs)
	distinct := map[string]bool{}
	for _, id := range ids {
		rs := byID[id]
		if len(rs) != 1 {
			t.Errorf("request %s has %d audit records of a signature, want 1", id, len(rs))
			continue
		}
		if rs[0].Serial != serials[id] {
			t.Errorf("request %s: audit serial %s, reply serial %s", id, rs[0].Serial, serials[id])
		}
		distinct[rs[0].Serial] = true
	}
	if len(byID) != n || len(distinct) != n {
		t.Errorf("audit trail: %d signed request ids and %d distinct serials, want %d", len(byID), len(distinct), n)
	}
}

// tokenDir is the dev token's directory under the state directory: SoftHSM2 keeps
// one file per object in it.
func tokenDir(t *testing.T, state string) string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(state, "softhsm", "tokens", "*", "token.object"))
	if err != nil || len(m) != 1 {
		t.Fatalf("the dev token's directory: %v %v", m, err)
	}
	return filepath.Dir(m[0])
}

// objectFiles are the token's object files.
func objectFiles(dir string) map[string]bool {
	m := map[string]bool{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, ".object") && n != "token.object" {
			m[n] = true
		}
	}
	return m
}

// killWhenObjects stops and kills the daemon the moment n new object files show in
// the token's directory, and, with complete, once they have their attributes
// (SoftHSM2 writes an object's file in two steps: an 8-byte header, then the
// attributes). Killed on the first file, the daemon is inside the token call; on
// complete files, the token has done its part and the daemon's state store and audit
// trail may not have. It returns false when that did not happen within timeout (the
// daemon is then killed anyway).
func killWhenObjects(d *daemon, dir string, before map[string]bool, n int, complete bool, timeout time.Duration) bool {
	return killWhen(d, dir, before, n, complete, 0, timeout)
}

// killWhen is killWhenObjects that, with settle > 0, also waits until the new files
// have not changed size for settle: the token call has returned.
func killWhen(d *daemon, dir string, before map[string]bool, n int, complete bool, settle, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	var last string
	var since time.Time
	for time.Now().Before(deadline) {
		c := 0
		var sizes []string
		for name := range objectFiles(dir) {
			if before[name] {
				continue
			}
			if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && (!complete || fi.Size() > 64) {
				c++
				sizes = append(sizes, fmt.Sprint(name, fi.Size()))
			}
		}
		sort.Strings(sizes)
		now := strings.Join(sizes, ",")
		if now != last {
			last, since = now, time.Now()
		}
		if c >= n && time.Since(since) >= settle {
			d.kill9()
			return true
		}
		time.Sleep(100 * time.Microsecond)
	}
	d.kill9()
	return false
}

// tokenObjects lists the token's objects of a type ("privkey", "cert") with id hexID
// through OpenSC's pkcs11-tool, as an auditor of the token would.
func tokenObjects(t *testing.T, state, typ, hexID string) int {
	t.Helper()
	tok, err := softhsm.Open(filepath.Join(state, "softhsm"), "iot-hsm-dev")
	if err != nil {
		t.Fatal(err)
	}
	out, err := tok.Tool("--list-objects", "--type", typ, "--id", hexID, "--login", "--pin", tok.PIN)
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects: %v\n%s", err, out)
	}
	if strings.Contains(out, "failed") {
		// An object SoftHSM2 cannot read (a file torn by the kill): the listing
		// stops there, so the count is unknown.
		t.Logf("pkcs11-tool --list-objects --type %s: the token holds an unreadable object:\n%s", typ, out)
		return -1
	}
	// pkcs11-tool lists every object of the type whatever --id says: count by ID.
	n := 0
	for _, block := range strings.Split(out, "Object;")[1:] {
		for _, line := range strings.Split(block, "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == "ID" && strings.TrimSpace(v) == hexID {
				n++
			}
		}
	}
	return n
}

// slotState is the slot's state as slot.show gives it, or "" when the slot has no
// record.
func slotState(t *testing.T, o *fop, slotID string) string {
	t.Helper()
	r := o.call(protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: slotID})
	if !r.OK {
		if r.Error != nil && r.Error.Code == protocol.CodeNotFound {
			return ""
		}
		t.Fatalf("slot.show %s: %+v", slotID, r.Error)
	}
	return decode[protocol.SlotShow](t, r).State
}

// atKill is the state the killed daemon left, read from its files before anything
// starts again: the slot record (the store must open: no torn record), whether the
// reply is cached, and the audit records of the request (the trail must verify).
type atKill struct {
	slot   string // "" when there is no record
	cached bool
	audit  int  // records with result ok
	intent bool // the request's intent is stored: it reached the token's worker
}

func snapshot(t *testing.T, state, slotID, cmd, id string) atKill {
	t.Helper()
	st, err := store.Open(state)
	if err != nil {
		t.Fatalf("the state store does not open after the kill: %v", err)
	}
	defer st.Close()
	var k atKill
	rec, err := st.Slot(slotID)
	switch {
	case err == nil:
		k.slot = string(rec.State)
	case !errors.Is(err, store.ErrNotFound):
		t.Fatalf("slot %s after the kill: %v", slotID, err)
	}
	_, err = st.Reply(id)
	k.cached = err == nil
	intents, err := st.Intents()
	if err != nil {
		t.Fatalf("intents after the kill: %v", err)
	}
	_, k.intent = intents[id]
	k.audit, _ = auditCount(t, state, cmd, id)
	return k
}

// lostConflict: the retry of a request that ran before the kill and lost its reply
// is told so, replayed, naming its audit record, and not run again.
func lostConflict(r protocol.Reply) bool {
	return !r.OK && r.Error != nil && r.Error.Code == protocol.CodeConflict && r.Replayed &&
		r.Error.Details["audit_seq"] != nil && strings.Contains(r.Error.Message, "not run again")
}

// checkRecorded: after the restart the trail holds what the request did to the
// slot. A slot record changed by it means one "ok" record; an intent left with the
// slot unchanged means one "interrupted" record, maybe followed by the retry's own.
func checkRecorded(t *testing.T, state, cmd, id string, k atKill, changed bool) {
	t.Helper()
	ok, interrupted, all := 0, 0, 0
	for _, r := range auditRecords(t, state) {
		if r.Command != cmd || r.RequestID != id {
			continue
		}
		all++
		switch r.Result {
		case "ok":
			ok++
		case "interrupted":
			interrupted++
			if !strings.Contains(r.Note, "stopped") {
				t.Errorf("interrupted record without a note saying why: %+v", r)
			}
		}
	}
	switch {
	case changed && (ok != 1 || all != 1):
		t.Errorf("the slot shows request %s done at the kill; after the restart the trail has %d records for it, %d ok; want 1 ok", id, all, ok)
	case !changed && k.intent && interrupted != 1:
		t.Errorf("request %s was inside the token's worker at the kill and left the slot unchanged; %d interrupted records, want 1", id, interrupted)
	case !changed && !k.intent && interrupted != 0:
		t.Errorf("request %s never reached the token's worker, yet %d interrupted records", id, interrupted)
	}
}

// outcome is a reply reduced to what must not change between retries.
func outcome(r protocol.Reply) string {
	if r.OK {
		return "ok " + string(r.Result)
	}
	return r.Error.Code + ": " + r.Error.Message
}

// retryTwice sends the request again under its id, twice, after the restarted daemon
// has had a moment for the broker's redelivery of the original (its session is
// persistent, and a request it had not acknowledged comes again). Every reply after
// the restart must carry the same outcome, and once it succeeded, from the cache.
func retryTwice(t *testing.T, o *fop, id, cmd string, args any) protocol.Reply {
	t.Helper()
	time.Sleep(time.Second)
	before := len(o.got(id))
	o.sendRetry(id, cmd, args, 30*time.Second)
	r1 := waitNth(t, o, id, before+1)
	o.sendRetry(id, cmd, args, 30*time.Second)
	r2 := waitNth(t, o, id, before+2)
	time.Sleep(300 * time.Millisecond)
	rs := o.got(id)
	if len(rs) != before+2 {
		t.Errorf("request %s: %d replies to 2 retries", id, len(rs)-before)
	}
	if r1.OK && !r2.Replayed {
		t.Errorf("request %s retried after it succeeded: not answered from the reply cache", id)
	}
	first := r1
	if before > 0 {
		first = rs[0] // a reply before the kill, or the redelivery's
	}
	for _, r := range rs {
		if outcome(r) != outcome(first) {
			t.Errorf("request %s has two outcomes:\n%s\n%s", id, short(outcome(first)), short(outcome(r)))
			break
		}
	}
	fresh := 0
	for _, r := range rs {
		if !r.Replayed {
			fresh++
		}
	}
	if fresh > 1 {
		t.Errorf("request %s ran %d times", id, fresh)
	}
	t.Logf("request %s: %d replies (%d before the retries): %s", id, len(rs), before, short(outcome(first)))
	return first
}

func short(s string) string {
	if len(s) > 160 {
		return s[:160] + "..."
	}
	return s
}

func waitNth(t *testing.T, o *fop, id string, n int) protocol.Reply {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if rs := o.got(id); len(rs) >= n {
			return rs[n-1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no reply %d to %s", n, id)
	return protocol.Reply{}
}

// auditCount counts the records of a command for a request id.
func auditCount(t *testing.T, state, cmd, id string) (ok, other int) {
	t.Helper()
	for _, r := range auditRecords(t, state) {
		if r.Command == cmd && r.RequestID == id {
			if r.Result == "ok" {
				ok++
			} else {
				other++
			}
		}
	}
	return ok, other
}

// TestFaultKillDaemon kills the daemon with SIGKILL inside slot.provision,
// slot.import_cert and sign, starts it again on the same state directory and retries
// the requests under their ids. A request's effects are committed in steps a kill
// can separate (intent, token, slot record, audit record, reply cache); after the
// restart the trail must hold every change of state exactly once, and a retry must
// either run (nothing landed) or be told that it ran (its reply was lost), never
// run twice.
func TestFaultKillDaemon(t *testing.T) {
	mos := brokertest.StartMosquitto(t)

	start := func(t *testing.T) (dir, state, dev string, d *daemon, o *fop, hsm string) {
		dir = t.TempDir()
		state = filepath.Join(dir, "state")
		dev = "ihsm-kill-" + mqtttest.RandomID()
		d = startDaemonIn(t, dir, state, dev, mos.URL)
		o = newFop(t, mos.URL, dev)
		return dir, state, dev, d, o, hsmID(t, o.waitOnline(60*time.Second))
	}

	// slot.provision: killed on arrival (SIGSTOP right after the broker took the
	// request), inside the token's key generation (its first object file appears, and
	// when both objects have attributes but the private key's may be incomplete),
	// and once the key pair is whole on the token (the slot record, reply cache and
	// audit record may or may not be written).
	for _, point := range []string{"arrival", "inside-generate", "keypair-partly-written", "key-on-token"} {
		t.Run("provision/"+point, func(t *testing.T) {
			dir, state, dev, d, o, hsm := start(t)
			tdir := tokenDir(t, state)
			objs := objectFiles(tdir)
			args := protocol.ProvisionArgs{HSM: hsm, Slot: "0a", Mode: "generate", KeyType: "rsa2048", Label: "killed"}
			slotID := hsm + "/0a"
			id := mqtttest.RandomID()
			o.sendRetry(id, protocol.CmdSlotProvision, args, 10*time.Second)
			switch point {
			case "arrival":
				d.kill9()
			case "inside-generate":
				if !killWhenObjects(d, tdir, objs, 1, false, 30*time.Second) {
					t.Fatal("no key object appeared on the token within 30s")
				}
			case "keypair-partly-written":
				if !killWhenObjects(d, tdir, objs, 2, true, 30*time.Second) {
					t.Fatal("no key pair appeared on the token within 30s")
				}
			case "key-on-token":
				if !killWhen(d, tdir, objs, 2, true, 500*time.Microsecond, 30*time.Second) {
					t.Fatal("no key pair appeared on the token within 30s")
				}
			}
			keys := tokenObjects(t, state, "privkey", "0a")
			k := snapshot(t, state, slotID, protocol.CmdSlotProvision, id)
			t.Logf("killed at %s: slot record %q, intent %v, reply cached %v, %d audit records, %d private keys with id 0a on the token, %d replies",
				point, k.slot, k.intent, k.cached, k.audit, keys, len(o.got(id)))
			switch {
			case k.slot == "" && (keys == 0 || keys == -1): // before
			case k.slot == "key_ready" && (keys == 1 || keys == -1): // after the token and the store
			case k.slot == "" && keys == 1: // a key generated but not recorded
			default:
				t.Fatalf("inconsistent: slot record %q with %d keys on the token", k.slot, keys)
			}
			if k.slot == "key_ready" && !k.intent && !k.cached {
				t.Errorf("slot provisioned (key_ready) at the kill with neither an intent nor a cached reply: nothing would record it")
			}
			startDaemonIn(t, dir, state, dev, mos.URL)
			o.waitOnline(60 * time.Second)
			r := retryTwice(t, o, id, protocol.CmdSlotProvision, args)
			checkRecorded(t, state, protocol.CmdSlotProvision, id, k, k.slot == "key_ready")
			if k.slot == "key_ready" && !k.cached {
				// Provisioned, reply lost: the retry learns it ran.
				if !lostConflict(r) {
					t.Errorf("a provision that completed before the kill, retried under its id: %s; want conflict naming its audit record", short(outcome(r)))
				}
			} else if !r.OK {
				// A key on the token that the appliance never recorded: the
				// retry cannot generate over it, and says so. The way on is to
				// take the key over with existing (or to generate with overwrite).
				if r.Error.Code != protocol.CodeConflict || !strings.Contains(r.Error.Message, "holds a key") {
					t.Fatalf("retried provision: %s, want ok or conflict saying the slot holds a key", short(outcome(r)))
				}
				if k.slot != "" {
					t.Errorf("conflict on a slot recorded %q", k.slot)
				}
				t.Logf("a key generated but not recorded: the retry answers %s; taken over with existing", short(outcome(r)))
				r = o.call(protocol.CmdSlotProvision, protocol.ProvisionArgs{HSM: hsm, Slot: "0a", Mode: "existing", Label: "killed"})
				if !r.OK {
					// The key pair is not whole (the kill cut the private key's
					// object short): generate over it.
					t.Logf("existing refused: %s; generating with overwrite", short(outcome(r)))
					decode[protocol.ProvisionResult](t, o.call(protocol.CmdSlotProvision,
						protocol.ProvisionArgs{HSM: hsm, Slot: "0a", Mode: "generate", KeyType: "rsa2048", Overwrite: true}))
				}
			}
			// The slot and the token agree now, and the key in the record is the one
			// on the token: slot.csr signs with it and checks it against the record.
			if s := slotState(t, o, slotID); s != "key_ready" {
				t.Fatalf("slot after the retry: %q", s)
			}
			if r := o.call(protocol.CmdSlotCSR, protocol.ProvisioningCertArgs{SlotID: slotID,
				ProvisioningCert: string(pkitest.ProvisioningCert(t, "After Kill", 0))}); !r.OK {
				t.Errorf("slot %s is key_ready but cannot sign: %s (keys with id 0a on the token: %d)", slotID,
					short(outcome(r)), tokenObjects(t, state, "privkey", "0a"))
			}
			auditRecords(t, state)
		})
	}

	// slot.import_cert: killed on arrival, inside the token's object creation, and
	// once the certificate object is whole on the token (the slot record may still say
	// csr_pending).
	for _, point := range []string{"arrival", "inside-create", "cert-on-token"} {
		t.Run("import_cert/"+point, func(t *testing.T) {
			dir, state, dev, d, o, hsm := start(t)
			root, rootPEM := makeRoot(t, o, hsm)
			interm := decode[protocol.ProvisionResult](t, o.call(protocol.CmdSlotProvision,
				protocol.ProvisionArgs{HSM: hsm, Slot: "02", Mode: "generate", KeyType: "p256", Label: "issuing"}))
			csr := decode[protocol.CSRResult](t, o.call(protocol.CmdSlotCSR,
				protocol.ProvisioningCertArgs{SlotID: interm.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Fault Issuing CA", 0))})).CSR
			zero := 0
			cert := decode[protocol.SignResult](t, o.call(protocol.CmdSign, protocol.SignArgs{SlotID: root.SlotID,
				Kind: protocol.KindCertificate, CSR: csr, Profile: &protocol.Profile{Validity: "26280h", IsCA: true,
					MaxPathLen: &zero, KeyUsage: []string{"cert_sign", "crl_sign", "digital_signature"}}})).Certificate

			tdir := tokenDir(t, state)
			objs := objectFiles(tdir)
			args := protocol.ImportCertArgs{SlotID: interm.SlotID, Certificate: cert, Chain: rootPEM}
			id := mqtttest.RandomID()
			o.sendRetry(id, protocol.CmdSlotImport, args, 10*time.Second)
			switch point {
			case "arrival":
				d.kill9()
			case "inside-create":
				if !killWhenObjects(d, tdir, objs, 1, false, 30*time.Second) {
					t.Fatal("no certificate object appeared on the token within 30s")
				}
			case "cert-on-token":
				if !killWhenObjects(d, tdir, objs, 1, true, 30*time.Second) {
					t.Fatal("no certificate object appeared on the token within 30s")
				}
			}
			certs := tokenObjects(t, state, "cert", "02")
			k := snapshot(t, state, interm.SlotID, protocol.CmdSlotImport, id)
			t.Logf("killed at %s: slot record %q, intent %v, reply cached %v, %d audit records, %d certificates with id 02 on the token, %d replies",
				point, k.slot, k.intent, k.cached, k.audit, certs, len(o.got(id)))
			if k.slot != "csr_pending" && k.slot != "provisioned" {
				t.Fatalf("slot record after the kill: %q, want csr_pending (before) or provisioned (after)", k.slot)
			}
			if k.slot == "provisioned" && certs == 0 {
				t.Errorf("slot recorded provisioned but its certificate is not on the token")
			}
			if k.slot == "provisioned" && !k.intent && !k.cached {
				t.Errorf("slot provisioned by import_cert at the kill with neither an intent nor a cached reply: nothing would record it")
			}
			startDaemonIn(t, dir, state, dev, mos.URL)
			o.waitOnline(60 * time.Second)
			r := retryTwice(t, o, id, protocol.CmdSlotImport, args)
			checkRecorded(t, state, protocol.CmdSlotImport, id, k, k.slot == "provisioned")
			switch {
			case k.slot == "provisioned" && !k.cached:
				if !lostConflict(r) {
					t.Errorf("an import_cert that completed before the kill, retried under its id: %s; want conflict naming its audit record", short(outcome(r)))
				}
			case !r.OK:
				t.Errorf("retried import_cert: %s, want ok (the certificate is good; before or after the kill, importing it again is what the PKI asked)", outcome(r))
			}
			if s := slotState(t, o, interm.SlotID); s != "provisioned" {
				t.Errorf("slot after the retry: %s", s)
			}
			if c := tokenObjects(t, state, "cert", "02"); c == 0 || c > 1 {
				t.Errorf("%d certificate objects with id 02 on the token, want 1", c)
			}
			// The slot signs after all this.
			decode[protocol.SignResult](t, o.call(protocol.CmdSign, signArgs(t, interm.SlotID)))
			auditRecords(t, state)
		})
	}

	// sign: 60 requests stream in; the daemon is killed once 20 replies are out. Every
	// reply the PKI saw is replayed to a retry with the same serial, every request ends
	// with one outcome.
	t.Run("sign", func(t *testing.T) {
		dir, state, dev, d, o, hsm := start(t)
		root, _ := makeRoot(t, o, hsm)
		args := signArgs(t, root.SlotID)
		const n = 60
		ids := make([]string, n)
		for i := range ids {
			ids[i] = mqtttest.RandomID()
			o.sendRetry(ids[i], protocol.CmdSign, args, 10*time.Second)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			c := 0
			for _, id := range ids {
				if len(o.got(id)) > 0 {
					c++
				}
			}
			if c >= n/3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d replies", c)
			}
			time.Sleep(time.Millisecond)
		}
		d.kill9()
		time.Sleep(300 * time.Millisecond) // replies already on their way arrive
		seen := map[string]string{}
		for _, id := range ids {
			if rs := o.got(id); len(rs) > 0 {
				seen[id] = decode[protocol.SignResult](t, rs[0]).Serial
			}
		}
		startDaemonIn(t, dir, state, dev, mos.URL)
		o.waitOnline(60 * time.Second)
		// The trail as the killed daemon left it, checked before anything is added.
		recs := auditRecords(t, state)
		recorded := okSigns(recs)

		var twice []string
		for _, id := range ids {
			before := len(o.got(id))
			o.sendRetry(id, protocol.CmdSign, args, 30*time.Second)
			r := waitNth(t, o, id, before+1)
			if !r.OK && r.Error != nil && r.Error.Code == protocol.CodeConflict && r.Replayed {
				// Ran before the kill, recorded, its reply lost: told so, not run again.
				if _, ok := seen[id]; ok || len(recorded[id]) != 1 {
					t.Errorf("request %s answered as lost, but %d audit records and a reply seen before the kill: %v", id, len(recorded[id]), ok)
				}
				continue
			}
			res := decode[protocol.SignResult](t, r)
			if s, ok := seen[id]; ok && (s != res.Serial || !r.Replayed) {
				t.Errorf("request %s answered %s before the kill; retried: %s (replayed %v)", id, s, res.Serial, r.Replayed)
			}
			if _, ok := seen[id]; !ok && len(recorded[id]) == 1 && !r.Replayed {
				twice = append(twice, id)
			}
		}
		after := okSigns(auditRecords(t, state))
		for _, id := range ids {
			if c := len(after[id]); c != 1 {
				t.Errorf("request %s: %d audit records of a signature, want 1", id, c)
			}
		}
		if len(twice) > 0 {
			t.Errorf("%d requests signed twice: their signature was in the audit trail at the kill but their reply was not cached, so the retry ran them again (e.g. %s)", len(twice), twice[0])
		}
		t.Logf("%d replies before the kill; %d requests recorded in the trail at the kill; %d signed again on retry although recorded",
			len(seen), len(recorded), len(twice))

	})
}

// TestFaultTokenRemoved: the dev token's directory is renamed away while signs flow
// (SoftHSM2 no longer finds the token) and back. Requests meanwhile are answered
// hsm_offline, signing resumes when it returns, the daemon is never restarted.
func TestFaultTokenRemoved(t *testing.T) {
	mos := brokertest.StartMosquitto(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	dev := "ihsm-pull-" + mqtttest.RandomID()
	d := startDaemonIn(t, dir, state, dev, mos.URL)
	o := newFop(t, mos.URL, dev)
	st := o.waitOnline(60 * time.Second)
	root, _ := makeRoot(t, o, hsmID(t, st))
	pid := d.cmd.Process.Pid
	args := signArgs(t, root.SlotID)

	var mu sync.Mutex
	var ids []string
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			id := mqtttest.RandomID()
			if o.trySend(id, protocol.CmdSign, args) == nil {
				mu.Lock()
				ids = append(ids, id)
				mu.Unlock()
			}
		}
	}()
	count := func(code string, from int) int {
		mu.Lock()
		defer mu.Unlock()
		c := 0
		for _, id := range ids[min(from, len(ids)):] {
			for _, r := range o.got(id) {
				if code == "ok" && r.OK || r.Error != nil && r.Error.Code == code {
					c++
				}
			}
		}
		return c
	}
	mark := func() int { mu.Lock(); defer mu.Unlock(); return len(ids) }
	waitFor := func(what, code string, from int, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for count(code, from) < 5 {
			if time.Now().After(deadline) {
				t.Fatalf("no %s within %v", what, within)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	waitFor("signatures before the removal", "ok", 0, 30*time.Second)
	tokens := filepath.Join(state, "softhsm", "tokens")
	if err := os.Rename(tokens, tokens+".away"); err != nil {
		t.Fatal(err)
	}
	pulled := mark()
	waitFor("hsm_offline replies with the token gone", protocol.CodeHSMOffline, pulled, 30*time.Second)
	var offlineID string
	mu.Lock()
	sent := append([]string(nil), ids[pulled:]...)
	mu.Unlock()
	for _, id := range sent {
		if rs := o.got(id); len(rs) > 0 && rs[0].Error != nil && rs[0].Error.Code == protocol.CodeHSMOffline {
			offlineID = id
			break
		}
	}
	stGone := decode[protocol.Status](t, o.call(protocol.CmdStatus, nil))
	if stGone.HSMs[0].Present || stGone.ConnectedSlots != 0 {
		t.Errorf("status with the token gone: %+v", stGone)
	}

	if err := os.Rename(tokens+".away", tokens); err != nil {
		t.Fatal(err)
	}
	back := mark()
	waitFor("signatures after the token returned", "ok", back, 30*time.Second)
	close(stop)
	<-done
	time.Sleep(2 * time.Second) // the last replies

	mu.Lock()
	all := append([]string(nil), ids...)
	mu.Unlock()
	codes := map[string]int{}
	for _, id := range all {
		rs := o.got(id)
		if len(rs) != 1 {
			t.Errorf("request %s: %d replies, want 1", id, len(rs))
			continue
		}
		if rs[0].OK {
			codes["ok"]++
		} else {
			codes[rs[0].Error.Code]++
			if rs[0].Error.Code != protocol.CodeHSMOffline {
				t.Errorf("request %s: %s, want ok or hsm_offline", id, outcome(rs[0]))
			}
		}
	}
	t.Logf("%d requests: %v", len(all), codes)

	// hsm_offline is not cached: the same request, asked again, now runs.
	before := len(o.got(offlineID))
	o.sendRetry(offlineID, protocol.CmdSign, args, 10*time.Second)
	if r := waitNth(t, o, offlineID, before+1); !r.OK || r.Replayed {
		t.Errorf("retry of a request answered hsm_offline: %s (replayed %v), want a fresh signature", short(outcome(r)), r.Replayed)
	}
	stBack := decode[protocol.Status](t, o.call(protocol.CmdStatus, nil))
	if !stBack.HSMs[0].Present || stBack.ConnectedSlots != 1 {
		t.Errorf("status with the token back: %+v", stBack)
	}
	if !d.running() || d.cmd.Process.Pid != pid || strings.Count(d.log.String(), "iot-hsm running") != 1 ||
		!st.StartedAt.Equal(*stBack.StartedAt) {
		t.Fatal("the daemon restarted")
	}
	auditRecords(t, state)
}

// TestFaultDiskFull: the state directory is a small tmpfs, filled up while the daemon
// runs. Signatures are answered with a clear error and no result leaves unrecorded;
// once space is freed the daemon signs again, and its trail and store verify and open
// at a restart.
func TestFaultDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestFaultDiskFull mounts a tmpfs as the state directory and needs root (CI runs as root)")
	}
	mos := brokertest.StartMosquitto(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", state).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", state).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", state, err, out)
		}
	})
	dev := "ihsm-full-" + mqtttest.RandomID()
	d := startDaemonIn(t, dir, state, dev, mos.URL)
	o := newFop(t, mos.URL, dev)
	st := o.waitOnline(60 * time.Second)
	root, _ := makeRoot(t, o, hsmID(t, st))
	args := signArgs(t, root.SlotID)
	for range 5 {
		decode[protocol.SignResult](t, o.call(protocol.CmdSign, args))
	}

	// Fill the file system.
	filler := filepath.Join(state, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	for {
		if _, err := f.Write(chunk[:1]); err != nil {
			break
		}
	}
	f.Close()

	// Requests with the disk full: each answered once, clearly, nothing unrecorded.
	var failedIDs, okIDs []string
	msgs := map[string]int{}
	for range 20 {
		id := mqtttest.RandomID()
		o.sendRetry(id, protocol.CmdSign, args, 10*time.Second)
		r, ok := o.wait(id, 30*time.Second)
		if !ok {
			t.Fatalf("no reply to a sign with the disk full")
		}
		if r.OK {
			// Possible: the record fit in the audit file's last, already allocated
			// page. It must then be in the trail (checked below).
			okIDs = append(okIDs, id)
			continue
		}
		msgs[r.Error.Code+": "+r.Error.Message]++
		failedIDs = append(failedIDs, id)
		if r.Error.Code != protocol.CodeInternal || !strings.Contains(r.Error.Message, "audit trail could not be written") {
			t.Errorf("sign with the disk full: %s, want internal saying the audit trail could not be written", outcome(r))
		}
	}
	t.Logf("replies with the disk full: %v", msgs)
	if !d.running() {
		t.Fatal("the daemon died with the disk full")
	}
	decode[protocol.Status](t, o.call(protocol.CmdStatus, nil))

	// Space again: the daemon signs, and the trail as it is on disk verifies.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		decode[protocol.SignResult](t, o.call(protocol.CmdSign, args))
	}
	// The trail as it is on disk verifies: a write cut short by the full disk must
	// not stay in it, with the next record appended after the torn line.
	if err := auditVerify(t, state); err != nil {
		t.Errorf("after the disk was full: %v", err)
		d.signal(syscall.SIGTERM)
		d.wait(30 * time.Second)
		d2 := startDaemonIn(t, dir, state, dev, mos.URL)
		select {
		case <-d2.exited:
			t.Fatalf("and the appliance does not start again on this state:\n%s", d2.log.String())
		case <-time.After(10 * time.Second):
			t.Fatal("(the appliance still starts)")
		}
	}
	signed := okSigns(auditRecords(t, state))
	for _, id := range failedIDs {
		if len(signed[id]) != 0 {
			t.Errorf("request %s failed with the disk full but is recorded as signed", id)
		}
	}
	for _, id := range okIDs {
		if len(signed[id]) != 1 {
			t.Errorf("request %s signed with the disk full has %d audit records", id, len(signed[id]))
		}
	}
	t.Logf("with the disk full: %d signed (recorded), %d refused", len(okIDs), len(failedIDs))
	// A refused request is not cached: asked again, it runs now.
	before := len(o.got(failedIDs[0]))
	o.sendRetry(failedIDs[0], protocol.CmdSign, args, 10*time.Second)
	if r := waitNth(t, o, failedIDs[0], before+1); !r.OK || r.Replayed {
		t.Errorf("retry of a request refused with the disk full: %s (replayed %v), want a fresh signature", short(outcome(r)), r.Replayed)
	}

	// And the appliance starts again on this state.
	d.signal(syscall.SIGTERM)
	d.wait(30 * time.Second)
	startDaemonIn(t, dir, state, dev, mos.URL)
	o.waitOnline(60 * time.Second)
	decode[protocol.SignResult](t, o.call(protocol.CmdSign, args))
	auditRecords(t, state)
}
