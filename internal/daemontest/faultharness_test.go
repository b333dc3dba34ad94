package daemontest

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// The fault tests run the real binary against a real mosquitto, with a state
// directory that outlives one daemon process (kill -9 and start again).

// faultConfig is the daemon's configuration for the fault tests: the test's
// mosquitto, and a queue that takes a burst of 500 signs without busy.
const faultConfig = `device_id = "%s"
log_level = "info"
queue_size = 1024

[service]
broker_wait = "5s"
stop_timeout = "3s"
hung_grace = "1s"

# Only the daemon's own token: other packages' tests plug virtual YubiKeys into the
# pcscd all tests share.
[yubikey]
disabled = true

[mqtt]
broker = %q
allow_plaintext = true
`

// startDaemonIn starts `iot-hsm run --dev --config <dir>/config.toml --state-dir
// stateDir` against brokerURL. dir and stateDir survive the process, so a second call
// with the same arguments is a restart of the same appliance.
func startDaemonIn(t *testing.T, dir, stateDir, deviceID, brokerURL string) *daemon {
	t.Helper()
	bin := binary(t)
	d := &daemon{t: t, log: &syncbuf.Buffer{}, dir: dir, config: filepath.Join(dir, "config.toml"),
		broker: brokerURL, deviceID: deviceID, exited: make(chan struct{})}
	d.writeConfig(fmt.Sprintf(faultConfig, deviceID, brokerURL))
	d.command(bin, "run", "--dev", "--config", d.config, "--state-dir", stateDir)
	d.launch()
	return d
}

// running reports whether the process has not exited.
func (d *daemon) running() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// kill9 stops the process where it is (SIGSTOP: it takes no further step) and then
// kills it with SIGKILL, as a power cut or the OOM killer would.
func (d *daemon) kill9() {
	d.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGSTOP)
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		d.t.Fatal("the daemon did not die on SIGKILL")
	}
}

// fop is a PKI talking to the daemon: it keeps every reply per id (to count them),
// and can send a request again under the same id.
type fop struct {
	*mqtttest.Client
	t      *testing.T
	device string
}

func newFop(t *testing.T, brokerURL, deviceID string) *fop {
	t.Helper()
	c := mqtttest.Start(t, brokerURL, mqtttest.Options{Name: "pki", Expiry: 5 * time.Minute})
	return &fop{Client: c, t: t, device: deviceID}
}

func (o *fop) topic(cmd string) string {
	return protocol.DefaultRoot + "/" + o.device + "/cmd/" + cmd
}

// trySend publishes the request once (QoS 1, waiting for the broker's PUBACK).
func (o *fop) trySend(id, cmd string, args any) error {
	_, payload := o.Request(id, args)
	return o.Send(o.topic(cmd), payload)
}

// sendRetry publishes until the broker takes it (the broker may be restarting).
func (o *fop) sendRetry(id, cmd string, args any, within time.Duration) {
	o.t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := o.trySend(id, cmd, args)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			o.t.Fatalf("publishing %s %s: %v", cmd, id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (o *fop) got(id string) []protocol.Reply { return o.Replies(id) }

// wait returns the first reply to id, or false after timeout.
func (o *fop) wait(id string, timeout time.Duration) (protocol.Reply, bool) {
	return o.Reply(id, 1, timeout)
}

// call sends a request with a fresh id (retrying the publish while the broker or the
// daemon comes back) and waits for its reply.
func (o *fop) call(cmd string, args any) protocol.Reply {
	o.t.Helper()
	id := mqtttest.RandomID()
	o.sendRetry(id, cmd, args, 30*time.Second)
	r, ok := o.wait(id, 60*time.Second)
	if !ok {
		o.t.Fatalf("no reply to %s %s within 60s", cmd, id)
	}
	return r
}

// callID sends the request under the given id until a reply comes: the daemon may
// still be starting and not subscribed yet, so the first copies can go unheard.
func (o *fop) callID(id, cmd string, args any, within time.Duration) protocol.Reply {
	o.t.Helper()
	deadline := time.Now().Add(within)
	for {
		o.sendRetry(id, cmd, args, within)
		if r, ok := o.wait(id, 3*time.Second); ok {
			return r
		}
		if time.Now().After(deadline) {
			o.t.Fatalf("no reply to %s %s within %v", cmd, id, within)
		}
	}
}

// waitOnline waits until the daemon answers status.
func (o *fop) waitOnline(within time.Duration) protocol.Status {
	o.t.Helper()
	return decode[protocol.Status](o.t, o.callID(mqtttest.RandomID(), protocol.CmdStatus, nil, within))
}

// provisioningCert is the PKI's template for a CA certificate.
// leafCSR is what a TLS server sends its PKI.
func leafCSR(t *testing.T, dns string) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: dns}, DNSNames: []string{dns},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// hsmID is the dev token's HSM id, from the status.
func hsmID(t *testing.T, st protocol.Status) string {
	t.Helper()
	if len(st.HSMs) != 1 {
		t.Fatalf("status lists %d HSMs, want the dev token: %+v", len(st.HSMs), st.HSMs)
	}
	return st.HSMs[0].ID
}

// makeRoot provisions slot 01 (P-256 generated on the token) as a self-signed root.
func makeRoot(t *testing.T, o *fop, hsm string) (protocol.ProvisionResult, string) {
	t.Helper()
	root := decode[protocol.ProvisionResult](t, o.call(protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: hsm, Slot: "01", Mode: "generate", KeyType: "p256", Label: "root"}))
	rootPEM := decode[protocol.CertificateResult](t, o.call(protocol.CmdSlotSelfSign,
		protocol.ProvisioningCertArgs{SlotID: root.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Fault Test Root", 1))})).Certificate
	return root, rootPEM
}

func signArgs(t *testing.T, slotID string) protocol.SignArgs {
	return protocol.SignArgs{SlotID: slotID, Kind: protocol.KindCertificate, CSR: leafCSR(t, "node.example.com"),
		Profile: &protocol.Profile{Validity: "1h"}}
}

// auditVerify runs `iot-hsm audit verify`, the auditor's offline check, on the trail
// in the state directory.
func auditVerify(t *testing.T, stateDir string) error {
	t.Helper()
	path := filepath.Join(stateDir, "audit.log")
	out, err := exec.Command(binary(t), "audit", "verify", path).CombinedOutput()
	if err == nil && strings.Contains(string(out), "chain intact") {
		return nil
	}
	raw, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	return fmt.Errorf("iot-hsm audit verify %s: %v\n%s\nthe trail's last lines:\n%s", path, err, out,
		strings.Join(lines[max(0, len(lines)-3):], "\n"))
}

// auditRecords checks the trail with auditVerify and reads its records.
func auditRecords(t *testing.T, stateDir string) []audit.Record {
	t.Helper()
	if err := auditVerify(t, stateDir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(stateDir, "audit.log")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var recs []audit.Record
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

// okSigns counts the sign records with result ok per request id.
func okSigns(recs []audit.Record) map[string][]audit.Record {
	m := map[string][]audit.Record{}
	for _, r := range recs {
		if r.Command == protocol.CmdSign && r.Result == "ok" {
			m[r.RequestID] = append(m[r.RequestID], r)
		}
	}
	return m
}
