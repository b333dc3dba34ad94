package device

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/auth"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// replies counts what was published on the reply topic.
func (f *fakeTransport) replies(d *Device) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.out[d.Topics().Reply()])
}

// waitReplies waits until n replies were published.
func (f *fakeTransport) waitReplies(t *testing.T, d *Device, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for f.replies(d) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d replies, want %d", f.replies(d), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func dirSize(t *testing.T, dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if fi, err := e.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// rssKiB reads the resident set of this process.
func rssKiB(t *testing.T) int {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skip("no /proc")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}

// settledGoroutines waits for goroutines of finished work to exit.
func settledGoroutines(limit int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 100 && n > limit; i++ {
		time.Sleep(10 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	return n
}

// floodAuditTrail opens an audit trail in the core's state directory.
func floodAuditTrail(t *testing.T, r *core) *audit.Log {
	al, err := audit.Open(filepath.Join(r.stateDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	return al
}

// Requests naming HSMs, slots and CAs the appliance does not have are answered at
// intake: no worker (two goroutines each, kept forever), no cached reply, no audit
// record per request.
func TestFloodOfUnknownIDs(t *testing.T) {
	r := newCore(t)
	al := floodAuditTrail(t, r)
	d := New(Options{DeviceID: "flood", Audit: al}, r.slots)
	tr := &fakeTransport{}
	if err := d.Start(t.Context(), tr); err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	// One request that runs, so the workers that should exist do.
	request(d, protocol.CmdStatus, "warm-up", "")
	tr.waitReplies(t, d, 1)
	runtime.GC()
	goroutines, rss, size, head := settledGoroutines(0), rssKiB(t), dirSize(t, r.stateDir), al.Head().Seq

	const n = 3000
	for i := 0; i < n; i += 100 {
		for k := i; k < i+100; k++ {
			id := fmt.Sprintf("flood-%d", k)
			hsmID := fmt.Sprintf("pkcs11-%016x", k)
			caID := fmt.Sprintf("%064x", k)
			switch k % 6 {
			case 0:
				request(d, protocol.CmdHSMSetPIN, id, setPINArgs(hsmID, "123456", false, ""))
			case 1:
				request(d, protocol.CmdSlotProvision, id, fmt.Sprintf(`{"hsm":%q,"slot":"01","mode":"generate","key_type":"p256"}`, hsmID))
			case 2:
				request(d, protocol.CmdSlotSelfSign, id, fmt.Sprintf(`{"slot_id":"%s/01","provisioning_cert":"x"}`, hsmID))
			case 3:
				request(d, protocol.CmdSlotClear, id, fmt.Sprintf(`{"slot_id":"%s/%02x"}`, r.hsmID, k%256))
			case 4:
				request(d, protocol.CmdSign, id, fmt.Sprintf(`{"ca_id":%q,"kind":"crl"}`, caID))
			case 5:
				d.Handle(d.Topics().CASign(caID), fmt.Appendf(nil, `{"id":%q,"args":{"kind":"crl"}}`, id))
			}
		}
		tr.waitReplies(t, d, 1+i+100)
	}
	tr.mu.Lock()
	for _, m := range tr.out[d.Topics().Reply()][1:] {
		var rep protocol.Reply
		if json.Unmarshal(m, &rep) != nil || rep.OK || rep.Error.Code != protocol.CodeNotFound {
			tr.mu.Unlock()
			t.Fatalf("reply to an unknown id: %s", m)
		}
	}
	tr.mu.Unlock()

	runtime.GC()
	if g := settledGoroutines(goroutines + 2); g > goroutines+2 {
		t.Errorf("goroutines: %d before the flood, %d after", goroutines, g)
	}
	if grown := dirSize(t, r.stateDir) - size; grown > 1<<20 {
		t.Errorf("the state directory grew by %d bytes", grown)
	}
	if h := al.Head().Seq; h != head {
		t.Errorf("the audit trail grew by %d records", h-head)
	}
	if after := rssKiB(t); after-rss > 32<<10 {
		t.Errorf("resident memory: %d KiB before, %d KiB after", rss, after)
	}
}

// Unsigned requests to an appliance that takes only signed ones are refused and
// counted; the audit trail samples them (one record, then one per window with the
// count) instead of one fsynced record each.
func TestFloodOfUnsignedRequestsIsSampled(t *testing.T) {
	r := newCore(t)
	al := floodAuditTrail(t, r)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Controllers"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	v, err := auth.NewVerifier(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	d := New(Options{DeviceID: "flood", Audit: al, Verifier: v}, r.slots)
	tr := &fakeTransport{}
	if err := d.Start(t.Context(), tr); err != nil {
		t.Fatal(err)
	}
	head := al.Head().Seq
	const n = 3000
	for i := 0; i < n; i += 100 {
		for k := i; k < i+100; k++ {
			request(d, protocol.CmdSlotClear, fmt.Sprintf("forged-%d", k), fmt.Sprintf(`{"slot_id":"%s/01","destroy_key":true}`, r.hsmID))
		}
		tr.waitReplies(t, d, i+100)
	}
	if c := d.Status().Counters.Refused; c != n {
		t.Errorf("refused counter %d, want %d", c, n)
	}
	d.Stop()
	recs := al.Tail(0)
	var got []audit.Record
	for _, rec := range recs {
		if rec.Seq > head {
			got = append(got, rec)
		}
	}
	if len(got) != 2 {
		t.Fatalf("%d audit records of the flood, want 2", len(got))
	}
	if got[0].Result != protocol.CodeUnauthorized || !strings.Contains(got[1].Note, fmt.Sprint(n-1)) {
		t.Fatalf("audit records of the flood: %+v", got)
	}
}
