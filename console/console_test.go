package console

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/auth"
	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// The tests run the console against a real (embedded) broker and a fake device
// that records what arrives on the wire and answers what each test scripts.

func startBroker(t *testing.T) string {
	t.Helper()
	b, err := mqtt.StartBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.URL()
}

// newClient connects a test client with subs subscribed before the session starts.
func newClient(t *testing.T, url string, subs map[string]mqtt.Handler) *mqtt.Client {
	t.Helper()
	c, err := mqtttest.Connect(t, mqtt.Config{Broker: url, AllowPlaintext: true, ClientID: "test-" + mqtttest.RandomID()}, subs)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// received is one request as the fake device saw it.
type received struct {
	topic string
	raw   []byte
	req   protocol.Request
}

// answerFunc returns the payloads to publish on the request's reply_to, in order;
// none leaves the request unanswered.
type answerFunc func(cmd string, req protocol.Request) [][]byte

// fakeDevice subscribes the given filters and answers with answer; the request of a
// signed message is read from its payload, unverified.
func fakeDevice(t *testing.T, url string, answer answerFunc, filters ...string) <-chan received {
	t.Helper()
	in := make(chan received, 16)
	got := make(chan received, 16)
	subs := map[string]mqtt.Handler{}
	for _, f := range filters {
		subs[f] = func(topic string, payload []byte) { in <- received{topic: topic, raw: payload} }
	}
	c := newClient(t, url, subs)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for {
			var r received
			select {
			case r = <-in:
			case <-ctx.Done():
				return
			}
			inner := r.raw
			if auth.IsJWS(inner) {
				inner = auth.PeekPayload(inner)
			}
			_ = json.Unmarshal(inner, &r.req)
			got <- r
			cmd := r.topic[strings.LastIndex(r.topic, "/")+1:]
			if _, after, ok := strings.Cut(r.topic, "/cmd/"); ok {
				cmd = after
			}
			for _, p := range answer(cmd, r.req) {
				_ = c.Publish(ctx, r.req.ReplyTo, p, false)
			}
		}
	}()
	return got
}

func okReply(id, cmd string, res any) []byte {
	raw, _ := json.Marshal(res)
	out, _ := json.Marshal(protocol.Reply{ID: id, Cmd: cmd, OK: true, Result: raw})
	return out
}

func errReply(id, cmd string, e *protocol.Error) []byte {
	out, _ := json.Marshal(protocol.Reply{ID: id, Cmd: cmd, OK: false, Error: e})
	return out
}

// run runs the console as `iot-hsm console args...`.
func run(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Run(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// clearEnv keeps the operator's environment out of the tests.
func clearEnv(t *testing.T) {
	t.Setenv("IOT_HSM_DEVICE", "")
	t.Setenv("IOT_HSM_BROKER", "")
}

func next(t *testing.T, got <-chan received) received {
	t.Helper()
	select {
	case r := <-got:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("the fake device received no request")
	}
	return received{}
}

func argsMap(t *testing.T, raw json.RawMessage) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("args %s: %v", raw, err)
	}
	return m
}

var replyTopicRE = regexp.MustCompile(`^iot-hsm/console/iot-hsm-console-[0-9a-f]{16}/reply$`)

func testCert(t *testing.T) string {
	t.Helper()
	p, err := ca.MakeProvisioningCert(ca.ProvisioningOptions{Subject: pkix.Name{CommonName: "Issued"}, Validity: time.Hour, MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	return string(p)
}

func testCSR(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "leaf"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestProvisionRequestOnTheWire(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	res := protocol.ProvisionResult{SlotID: "pkcs11-abc/01", PublicKey: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
		KeyType: "p256", CAID: "c0ffee"}
	got := fakeDevice(t, url, func(cmd string, req protocol.Request) [][]byte {
		return [][]byte{okReply(req.ID, cmd, res)}
	}, "iot-hsm/dev1/cmd/+")

	before := time.Now()
	code, stdout, stderr := run(t, "", "--broker", url, "--device", "dev1", "slot.provision",
		"--hsm", "pkcs11-abc", "--slot", "01", "--mode", "generate", "--key-type", "p256", "--label", "root", "--overwrite", "--yes", "--id", "req-1")
	after := time.Now()
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	// --overwrite reads the slot first, to name what it destroys.
	if r := next(t, got); r.topic != "iot-hsm/dev1/cmd/slot.show" {
		t.Errorf("first request on %q, want slot.show", r.topic)
	}
	r := next(t, got)
	if r.topic != "iot-hsm/dev1/cmd/slot.provision" {
		t.Errorf("topic %q", r.topic)
	}
	if _, e := protocol.DecodeRequest(r.raw); e != nil {
		t.Errorf("the device's decoder refuses the request: %v", e)
	}
	if r.req.ID != "req-1" {
		t.Errorf("id %q", r.req.ID)
	}
	if !replyTopicRE.MatchString(r.req.ReplyTo) {
		t.Errorf("reply_to %q is not a private console topic", r.req.ReplyTo)
	}
	if r.req.ExpiresAt == nil || r.req.ExpiresAt.Before(before.Add(provisionTimeout)) || r.req.ExpiresAt.After(after.Add(provisionTimeout)) {
		t.Errorf("expires_at %v, want now + 3m", r.req.ExpiresAt)
	}
	want := map[string]any{"hsm": "pkcs11-abc", "slot": "01", "mode": "generate", "key_type": "p256", "label": "root", "overwrite": true}
	if m := argsMap(t, r.req.Args); !reflect.DeepEqual(m, want) {
		t.Errorf("args %v, want %v", m, want)
	}
	if stdout != res.PublicKey {
		t.Errorf("stdout %q, want the public key", stdout)
	}
	if !strings.Contains(stderr, "slot_id: pkcs11-abc/01") {
		t.Errorf("stderr %q lacks the slot id", stderr)
	}
}

func TestSignCertificateCSRFromStdin(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	cert := testCert(t)
	got := fakeDevice(t, url, func(cmd string, req protocol.Request) [][]byte {
		return [][]byte{okReply(req.ID, cmd, protocol.SignResult{SlotID: "pkcs11-abc/01", Certificate: cert, Serial: "0a1b"})}
	}, "iot-hsm/dev1/cmd/+")
	csr := testCSR(t)

	// --device after the command name: global flags are accepted there too.
	code, stdout, stderr := run(t, csr, "--broker", url, "sign", "--device", "dev1", "--slot-id", "pkcs11-abc/01",
		"--kind", "certificate", "--csr", "-", "--validity", "720h", "--serial", "0a1b",
		"--key-usage", "digital_signature,key_encipherment", "--ext-key-usage", "server_auth",
		"--dns", "a.example, b.example", "--ip", "192.0.2.1")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	r := next(t, got)
	if r.topic != "iot-hsm/dev1/cmd/sign" {
		t.Errorf("topic %q", r.topic)
	}
	if len(r.req.ID) != 16 || !protocol.ValidID(r.req.ID) {
		t.Errorf("default id %q, want 16 hex characters", r.req.ID)
	}
	var a protocol.SignArgs
	if e := protocol.DecodeArgs(r.req.Args, &a); e != nil {
		t.Fatalf("the device's decoder refuses the args: %v", e)
	}
	want := map[string]any{
		"slot_id": "pkcs11-abc/01", "kind": "certificate", "csr": csr,
		"profile": map[string]any{
			"validity": "720h", "serial": "0a1b",
			"key_usage":     []any{"digital_signature", "key_encipherment"},
			"ext_key_usage": []any{"server_auth"},
			"dns_names":     []any{"a.example", "b.example"},
			"ip_addresses":  []any{"192.0.2.1"},
		},
	}
	if m := argsMap(t, r.req.Args); !reflect.DeepEqual(m, want) {
		t.Errorf("args\n %v\nwant\n %v", m, want)
	}
	if stdout != cert {
		t.Errorf("stdout %q, want the certificate PEM", stdout)
	}
	if !strings.Contains(stderr, "certificate CN=Issued") {
		t.Errorf("stderr %q lacks the summary", stderr)
	}

	// --out takes the certificate off stdout.
	out := filepath.Join(t.TempDir(), "leaf.pem")
	csrFile := filepath.Join(t.TempDir(), "leaf.csr")
	if err := os.WriteFile(csrFile, []byte(csr), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = run(t, "", "--broker", url, "--device", "dev1", "sign", "--slot-id", "pkcs11-abc/01",
		"--kind", "certificate", "--csr", csrFile, "--out", out)
	if code != 0 || stdout != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if b, _ := os.ReadFile(out); string(b) != cert {
		t.Errorf("--out file holds %q", b)
	}
	if m := argsMap(t, next(t, got).req.Args); !reflect.DeepEqual(m["profile"], map[string]any{}) {
		t.Errorf("profile %v, want {} (the device requires one)", m["profile"])
	}
}

func TestReplyIDIsMatched(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	fakeDevice(t, url, func(cmd string, req protocol.Request) [][]byte {
		return [][]byte{
			errReply("someone-else", cmd, protocol.Errorf(protocol.CodeInternal, "not yours")),
			okReply(req.ID, cmd, protocol.ClearResult{SlotID: "h/01", State: "empty"}),
		}
	}, "iot-hsm/dev1/cmd/+")
	code, stdout, stderr := run(t, "", "--broker", url, "--device", "dev1", "slot.clear", "--slot-id", "h/01")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q: a reply to another id was taken", code, stderr)
	}
	if !strings.Contains(stdout, "slot h/01: empty, key kept on the HSM") {
		t.Errorf("stdout %q", stdout)
	}
}

func TestSlotShow(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	cert := testCert(t)
	na := time.Date(2036, 1, 2, 3, 4, 5, 0, time.UTC)
	got := fakeDevice(t, url, func(cmd string, req protocol.Request) [][]byte {
		return [][]byte{okReply(req.ID, cmd, protocol.SlotShow{SlotID: "h/01", HSM: "h", State: "provisioned", Connected: true,
			KeyType: "p384", CAID: "c0ffee", Certificate: cert, Subject: "CN=Issued", NotAfter: &na})}
	}, "iot-hsm/dev1/cmd/+")
	code, stdout, stderr := run(t, "", "--broker", url, "--device", "dev1", "slot.show", "--slot-id", "h/01")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if m := argsMap(t, next(t, got).req.Args); !reflect.DeepEqual(m, map[string]any{"slot_id": "h/01"}) {
		t.Errorf("args %v", m)
	}
	head, pemPart, ok := strings.Cut(stdout, "-----BEGIN CERTIFICATE-----")
	if !ok || "-----BEGIN CERTIFICATE-----"+pemPart != cert {
		t.Fatalf("stdout does not end in the certificate:\n%s", stdout)
	}
	for _, want := range []string{"slot_id:    h/01\n", "state:      provisioned\n", "ca_id:      c0ffee\n", "not_after:  2036-01-02T03:04:05Z\n"} {
		if !strings.Contains(head, want) {
			t.Errorf("slot.show lacks %q:\n%s", want, head)
		}
	}
}

func TestErrorReplyPINIncorrect(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	got := fakeDevice(t, url, func(cmd string, req protocol.Request) [][]byte {
		e := protocol.Errorf(protocol.CodePINIncorrect, "the token refused the PIN")
		e.Details = map[string]any{"retries": 2}
		return [][]byte{errReply(req.ID, cmd, e)}
	}, "iot-hsm/dev1/cmd/+")
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte("918273\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := run(t, "", "--broker", url, "--device", "dev1", "hsm.set_pin", "--hsm", "pkcs11-abc", "--pin-file", pinFile)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %q", code, stderr)
	}
	if !strings.Contains(stderr, "error: pin_incorrect: the token refused the PIN\n") || !strings.Contains(stderr, "retries left: 2") {
		t.Errorf("stderr %q", stderr)
	}
	r := next(t, got)
	if m := argsMap(t, r.req.Args); !reflect.DeepEqual(m, map[string]any{"hsm": "pkcs11-abc", "pin": "918273"}) {
		t.Errorf("args %v", m)
	}
	if strings.Contains(stdout+stderr, "918273") {
		t.Error("the PIN was printed")
	}

	// --json: the envelope on stdout as well, PIN from stdin.
	code, stdout, stderr = run(t, "4455\n", "--broker", url, "--device", "dev1", "--json", "hsm.set_pin", "--hsm", "pkcs11-abc", "--pin-stdin", "--id", "pin-2")
	if code != 1 || !strings.Contains(stderr, "error: pin_incorrect") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var reply protocol.Reply
	if err := json.Unmarshal([]byte(stdout), &reply); err != nil || reply.ID != "pin-2" || reply.OK || reply.Error.Code != protocol.CodePINIncorrect {
		t.Errorf("stdout %q (%v)", stdout, err)
	}
	if pin := argsMap(t, next(t, got).req.Args)["pin"]; pin != "4455" {
		t.Errorf("pin from stdin %q", pin)
	}
}

func TestNoReplyTimesOut(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	got := fakeDevice(t, url, func(string, protocol.Request) [][]byte { return nil }, "iot-hsm/dev1/cmd/+")
	start := time.Now()
	code, _, stderr := run(t, "", "--broker", url, "--device", "dev1", "--timeout", "800ms", "status")
	elapsed := time.Since(start)
	if code != 3 || !strings.Contains(stderr, "no reply within 800ms") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if elapsed < 800*time.Millisecond || elapsed > 5*time.Second {
		t.Errorf("gave up after %s, want about 800ms", elapsed)
	}
	r := next(t, got)
	if r.req.ExpiresAt == nil || r.req.ExpiresAt.After(start.Add(time.Second)) || r.req.ExpiresAt.Before(start.Add(800*time.Millisecond)) {
		t.Errorf("expires_at %v, want start + 800ms", r.req.ExpiresAt)
	}
}

func TestBrokerUnreachable(t *testing.T) {
	clearEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	code, _, stderr := run(t, "", "--broker", "tcp://"+addr, "--device", "dev1", "--timeout", "2s", "status")
	if code != 3 || !strings.Contains(stderr, "broker unreachable") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestStatusJSONAndTables(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	retries := 3
	na := time.Date(2036, 1, 2, 3, 4, 5, 0, time.UTC)
	st := protocol.Status{Online: true, Device: "dev1", Version: "1.2.0", Broker: "connected", ConnectedSlots: 1, SlotsTotal: 1,
		HSMs:  []protocol.StatusHSM{{ID: "pkcs11-abc", Kind: "pkcs11", Present: true, PIN: protocol.PINStatus{Set: true, Retries: &retries}}},
		Slots: []protocol.StatusSlot{{SlotID: "pkcs11-abc/01", State: "provisioned", Connected: true, KeyType: "p384", Subject: "CN=Root", NotAfter: &na}}}
	fakeDevice(t, url, func(cmd string, req protocol.Request) [][]byte {
		return [][]byte{okReply(req.ID, cmd, st)}
	}, "iot-hsm/dev1/cmd/+")

	code, stdout, stderr := run(t, "", "--broker", url, "--device", "dev1", "--json", "status", "--id", "st-1")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var reply protocol.Reply
	if err := json.Unmarshal([]byte(stdout), &reply); err != nil {
		t.Fatalf("stdout %q: %v", stdout, err)
	}
	var back protocol.Status
	if reply.ID != "st-1" || !reply.OK || reply.Cmd != "status" || json.Unmarshal(reply.Result, &back) != nil || back.Version != "1.2.0" {
		t.Errorf("envelope %+v", reply)
	}
	if !strings.Contains(stdout, "\n  \"id\": \"st-1\"") {
		t.Errorf("stdout is not the indented envelope: %q", stdout)
	}

	code, stdout, stderr = run(t, "", "--broker", url, "--device", "dev1", "status")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"device dev1: online, 1/1 CAs connected", "SLOT_ID", "NOT_AFTER",
		"pkcs11-abc/01  provisioned  yes        p384  CN=Root  2036-01-02T03:04:05Z", "pkcs11-abc  pkcs11  yes      set  3"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestSignByCAIDUsesTheCATopic(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	sig := []byte{1, 2, 3, 4}
	got := fakeDevice(t, url, func(cmd string, req protocol.Request) [][]byte {
		return [][]byte{okReply(req.ID, "sign", protocol.SignResult{SlotID: "pkcs11-abc/01", Signature: sig})}
	}, "iot-hsm/ca/+/sign", "iot-hsm/+/cmd/+")
	caID := strings.Repeat("ab", 32)
	digest := strings.Repeat("0f", 32)

	// No --device and no device online: only the CA topic can work.
	code, stdout, stderr := run(t, "", "--broker", url, "sign", "--ca-id", caID, "--kind", "digest", "--digest", digest)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	r := next(t, got)
	if r.topic != "iot-hsm/ca/"+caID+"/sign" {
		t.Errorf("topic %q", r.topic)
	}
	d, _ := hex.DecodeString(digest)
	want := map[string]any{"ca_id": caID, "kind": "digest", "digest": base64.StdEncoding.EncodeToString(d), "hash": "sha256"}
	if m := argsMap(t, r.req.Args); !reflect.DeepEqual(m, want) {
		t.Errorf("args %v, want %v", m, want)
	}
	if stdout != base64.StdEncoding.EncodeToString(sig)+"\n" {
		t.Errorf("stdout %q", stdout)
	}
}

func publishRetained(t *testing.T, c *mqtt.Client, dev string, st protocol.Status) {
	t.Helper()
	raw, _ := json.Marshal(st)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Publish(ctx, "iot-hsm/"+dev+"/status", raw, true); err != nil {
		t.Fatal(err)
	}
	// mochi acknowledges a QoS 1 publish before it hands it to subscribers, so a
	// console subscribing right now could get it twice: as retained and live. The
	// broker handles a client's packets in order, so once a second publish is
	// acknowledged the first has been handed out.
	if err := c.Publish(ctx, "iot-hsm/test-sync", []byte("x"), false); err != nil {
		t.Fatal(err)
	}
}

func TestDevicesAndDiscovery(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	pub := newClient(t, url, nil)
	publishRetained(t, pub, "dev1", protocol.Status{Online: true, Device: "dev1", Version: "1.2.0", Broker: "connected", ConnectedSlots: 2, SlotsTotal: 3})
	publishRetained(t, pub, "dev2", protocol.Status{Online: false, Device: "dev2"})

	code, stdout, stderr := run(t, "", "--broker", url, "devices", "--wait", "500ms")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "DEVICE  ONLINE  CONNECTED/TOTAL  VERSION  BROKER") ||
		strings.Join(strings.Fields(lines[1]), " ") != "dev1 yes 2/3 1.2.0 connected" ||
		strings.Join(strings.Fields(lines[2]), " ") != "dev2 no 0/0 - -" {
		t.Errorf("devices:\n%s", stdout)
	}

	// Without --device, the one device online is the one asked.
	got := fakeDevice(t, url, func(cmd string, req protocol.Request) [][]byte {
		return [][]byte{okReply(req.ID, cmd, protocol.HSMListResult{})}
	}, "iot-hsm/+/cmd/+")
	code, _, stderr = run(t, "", "--broker", url, "hsm.list")
	if code != 0 || !strings.Contains(stderr, "device: dev1 (the only one online)") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if r := next(t, got); r.topic != "iot-hsm/dev1/cmd/hsm.list" {
		t.Errorf("topic %q", r.topic)
	}

	// Two online: the console refuses to guess.
	publishRetained(t, pub, "dev3", protocol.Status{Online: true, Device: "dev3"})
	code, _, stderr = run(t, "", "--broker", url, "hsm.list")
	if code != 2 || !strings.Contains(stderr, "2 devices online (dev1, dev3), offline: dev2") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	select {
	case r := <-got:
		t.Errorf("a request went to %s", r.topic)
	default:
	}
}

func TestWatch(t *testing.T) {
	clearEnv(t)
	url := startBroker(t)
	pub := newClient(t, url, nil)
	publishRetained(t, pub, "dev1", protocol.Status{Online: true, Device: "dev1", ConnectedSlots: 1, SlotsTotal: 2, Broker: "connected"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		ev, _ := json.Marshal(protocol.Event{Time: time.Now().UTC(), Type: "slot.state", SlotID: "h/01", State: "provisioned"})
		for ctx.Err() == nil {
			_ = pub.Publish(ctx, "iot-hsm/dev1/events", ev, false)
			time.Sleep(50 * time.Millisecond)
		}
	}()
	code, stdout, stderr := run(t, "", "--broker", url, "--device", "dev1", "watch", "--count", "2", "--for", "10s")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], " dev1 status online, 1/2 CAs connected, broker connected") ||
		!strings.Contains(lines[1], " dev1 event slot.state slot=h/01 state=provisioned") {
		t.Errorf("watch:\n%s", stdout)
	}
}

func TestMakeProvisioningCert(t *testing.T) {
	clearEnv(t)
	out := filepath.Join(t.TempDir(), "prov.pem")
	code, stdout, stderr := run(t, "", "make-provisioning-cert", "--cn", "Lab Root", "--org", "Lab", "--country", "DE",
		"--validity", "8760h", "--path-len", "1", "--permitted-dns", "example.com", "--policy", "1.3.6.1.4.1.99999.1",
		"--crl-dp", "http://crl.example.com/root.crl", "--out", out)
	if code != 0 || stdout != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s holds no certificate PEM", out)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !c.IsCA || c.MaxPathLen != 1 || c.Subject.CommonName != "Lab Root" || c.Subject.Organization[0] != "Lab" ||
		c.Subject.Country[0] != "DE" || len(c.PermittedDNSDomains) != 1 || len(c.PolicyIdentifiers) != 1 ||
		c.PolicyIdentifiers[0].String() != "1.3.6.1.4.1.99999.1" || len(c.CRLDistributionPoints) != 1 {
		t.Errorf("certificate: CA %v pathlen %d subject %s dns %v policies %v crl %v", c.IsCA, c.MaxPathLen, c.Subject,
			c.PermittedDNSDomains, c.PolicyIdentifiers, c.CRLDistributionPoints)
	}
	if v := c.NotAfter.Sub(c.NotBefore); v != 8760*time.Hour {
		t.Errorf("validity %s", v)
	}

	code, stdout, _ = run(t, "", "make-provisioning-cert", "--cn", "X")
	if block, _ := pem.Decode([]byte(stdout)); code != 0 || block == nil {
		t.Errorf("exit %d, stdout %q", code, stdout)
	}
}

func TestUsageErrors(t *testing.T) {
	clearEnv(t)
	// A closed port: a command that tried to connect would exit 3, not 2.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	broker := "tcp://" + l.Addr().String()
	l.Close()
	csr := filepath.Join(t.TempDir(), "x.csr")
	if err := os.WriteFile(csr, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"no command", nil, "usage:"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"missing slot id", []string{"slot.show"}, "--slot-id is required"},
		{"PIN on the command line", []string{"hsm.set_pin", "--hsm", "h", "--pin", "1234"}, "flag provided but not defined: -pin"},
		{"no PIN source", []string{"hsm.set_pin", "--hsm", "h"}, "--pin-file or --pin-stdin is required"},
		{"bad mode", []string{"slot.provision", "--hsm", "h", "--slot", "01", "--mode", "bogus"}, "--mode must be"},
		{"import without key", []string{"slot.provision", "--hsm", "h", "--slot", "01", "--mode", "import"}, "needs --key-pem"},
		{"flag of another kind", []string{"sign", "--slot-id", "h/01", "--kind", "crl", "--number", "1", "--next-update-in", "1h", "--csr", csr}, "--csr do(es) not apply to --kind crl"},
		{"slot and ca", []string{"sign", "--slot-id", "h/01", "--ca-id", "ab", "--kind", "digest", "--digest", "00"}, "exactly one of --slot-id and --ca-id"},
		{"unknown kind", []string{"sign", "--slot-id", "h/01", "--kind", "poem"}, "--kind must be one of"},
		{"csr not PEM", []string{"sign", "--slot-id", "h/01", "--kind", "certificate", "--csr", csr}, "holds no PEM block"},
		{"csr missing", []string{"sign", "--slot-id", "h/01", "--kind", "certificate", "--csr", csr + ".none"}, "no such file"},
		{"crl number", []string{"sign", "--slot-id", "h/01", "--kind", "crl", "--number", "1e3", "--next-update-in", "1h"}, "--number"},
		{"stdin twice", []string{"slot.provision", "--hsm", "h", "--slot", "01", "--mode", "import", "--key-pem", "-", "--key-password-file", "-"}, "cannot both read stdin"},
		{"bad id", []string{"--device", "d", "status", "--id", "no spaces"}, "--id must be"},
		{"bad device", []string{"--device", "a/b", "status"}, "not a usable topic level"},
		{"stray argument", []string{"status", "now"}, `unexpected argument "now"`},
		{"plaintext far away", []string{"--broker", "tcp://192.0.2.1:1883", "--device", "d", "status"}, "plaintext and not on this machine"},
		{"bad timeout", []string{"--timeout", "-1s", "status"}, "invalid value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--broker", broker}, tc.args...)
			code, _, stderr := run(t, "key\n", args...)
			if code != 2 || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, tc.stderr)
			}
		})
	}
}

// TestHelpListsEveryCommandAndGlobalFlag: iot-hsm console help names every command
// the console dispatches and every global flag, so neither can be added without it.
func TestHelpListsEveryCommandAndGlobalFlag(t *testing.T) {
	clearEnv(t)
	code, stdout, stderr := run(t, "", "help")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for name := range commands {
		if !regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(name) + `( |$)`).MatchString(stdout) {
			t.Errorf("help does not list the command %s", name)
		}
	}
	fs := flag.NewFlagSet("globals", flag.ContinueOnError)
	(&options{}).register(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if !regexp.MustCompile(`(?m)^  (.*, )?--` + regexp.QuoteMeta(f.Name) + `( |,|$)`).MatchString(stdout) {
			t.Errorf("help does not list the global flag --%s", f.Name)
		}
	})
}
