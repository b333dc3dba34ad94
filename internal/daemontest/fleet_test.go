package daemontest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// fleetWindow is the test fleet's claim window, and how far ahead its requests expire.
const fleetWindow = 20 * time.Second

const fleetSection = `
[fleet]
enabled = true
claim_window = "20s"
`

// startFleetDaemon starts (or restarts, given the same directories) a fleet member.
func startFleetDaemon(t *testing.T, dir, stateDir, deviceID, brokerURL string) *daemon {
	t.Helper()
	d := &daemon{t: t, log: &syncbuf.Buffer{}, dir: dir, config: filepath.Join(dir, "config.toml"),
		broker: brokerURL, deviceID: deviceID, exited: make(chan struct{})}
	d.writeConfig(fmt.Sprintf(faultConfig, deviceID, brokerURL) + fleetSection)
	d.command(binary(t), "run", "--dev", "--config", d.config, "--state-dir", stateDir)
	d.launch()
	return d
}

// fleetMember is one appliance of the fleet and where it keeps its state.
type fleetMember struct {
	d          *daemon
	dir, state string
	id         string
}

// sharedCAKey is the CA key a PKI imports into every member, as PKCS#8 PEM.
func sharedCAKey(t *testing.T) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// joinFleet imports the CA key into a member's slot 01 and gives it the CA's
// certificate: the first member self-signs it, the others import it. It returns
// the certificate and the ca_id.
func joinFleet(t *testing.T, brokerURL string, m *fleetMember, keyPEM, rootPEM string) (string, string) {
	t.Helper()
	o := newFop(t, brokerURL, m.id)
	st := o.waitOnline(60 * time.Second)
	res := decode[protocol.ProvisionResult](t, o.call(protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: hsmID(t, st), Slot: "01", Mode: "import", KeyPEM: keyPEM, Label: "fleet-root"}))
	if rootPEM == "" {
		rootPEM = decode[protocol.CertificateResult](t, o.call(protocol.CmdSlotSelfSign,
			protocol.ProvisioningCertArgs{SlotID: res.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Fleet Root", 0))})).Certificate
	} else {
		decode[protocol.SlotShow](t, o.call(protocol.CmdSlotImport, protocol.ImportCertArgs{SlotID: res.SlotID, Certificate: rootPEM}))
	}
	return rootPEM, res.CAID
}

// TestFleetFailoverAndRestarts: two appliances hold one CA key and serve its CA topic
// on one mosquitto. While a PKI signs 450 requests, 16 in flight, resending each under
// the same id every 3 s: one appliance is killed (kill -9) and comes back a few
// seconds later, while what was sent to it is unexpired; then the broker is restarted
// with its state (SIGTERM, persistence), then killed and started without it. Every
// request is answered; no id is signed twice in the two audit trails together, and no
// id gets two certificates; while a member is down, every request is answered within
// two retry intervals.
func TestFleetFailoverAndRestarts(t *testing.T) {
	brokerState := t.TempDir()
	mos := brokertest.StartMosquitto(t, "persistence true", "persistence_location "+brokerState+"/")
	var members [2]*fleetMember
	for i := range members {
		dir := t.TempDir()
		m := &fleetMember{dir: dir, state: filepath.Join(dir, "state"), id: fmt.Sprintf("ihsm-fleet%d-%s", i, mqtttest.RandomID())}
		m.d = startFleetDaemon(t, m.dir, m.state, m.id, mos.URL)
		members[i] = m
	}
	keyPEM := sharedCAKey(t)
	rootPEM, caID := joinFleet(t, mos.URL, members[0], keyPEM, "")
	if _, id := joinFleet(t, mos.URL, members[1], keyPEM, rootPEM); id != caID {
		t.Fatalf("the same key gave two ca_ids: %s, %s", caID, id)
	}

	pki := mqtttest.Start(t, mos.URL, mqtttest.Options{Name: "pki"})
	args := protocol.SignArgs{Kind: protocol.KindCertificate, CSR: leafCSR(t, "node.example.com"),
		Profile: &protocol.Profile{Validity: "1h"}}
	load := newFleetLoad(pki, protocol.Topics{Root: protocol.DefaultRoot}.CASign(caID), 450, args, fleetWindow)
	loadDone := make(chan struct{})
	go func() {
		load.run(16)
		close(loadDone)
	}()

	at := func(n int32) {
		for load.done.Load() < n {
			time.Sleep(5 * time.Millisecond)
		}
	}
	at(80)
	members[0].d.kill9()
	killed := time.Now()
	t.Logf("%s killed after %d requests", members[0].id, load.done.Load())
	// Back while the requests the broker had for it are still unexpired.
	at(150)
	back := time.Now()
	members[0].d = startFleetDaemon(t, members[0].dir, members[0].state, members[0].id, mos.URL)
	t.Logf("%s started again after %d requests", members[0].id, load.done.Load())
	at(230)
	mos.Terminate()
	mos.Start(t)
	t.Logf("broker restarted with its state after %d requests", load.done.Load())
	at(310)
	mos.Stop()
	if err := os.Remove(filepath.Join(brokerState, "mosquitto.db")); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	mos.Start(t)
	t.Logf("broker killed and started without its state after %d requests", load.done.Load())
	<-loadDone
	time.Sleep(2 * time.Second) // a late duplicate arrives meanwhile

	checkFleetAnswers(t, load, rootPEM, killed, back)
	checkFleetAudit(t, load, members[0].state, members[1].state)
}

// checkFleetAnswers: every request answered, at most one certificate per id, each
// verifying under the root; while one member is down, first answers within two
// retries.
func checkFleetAnswers(t *testing.T, load *fleetLoad, rootPEM string, killed, back time.Time) {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(rootPEM)) {
		t.Fatal("root certificate unreadable")
	}
	outcomes := map[string]int{}
	var worst time.Duration
	var sample string
	for _, r := range load.reqs {
		reps := load.c.Replies(r.id)
		if len(reps) == 0 {
			t.Errorf("request %s (sent %d times) got no reply", r.id, r.sends)
			continue
		}
		serial, pemCert := "", ""
		for _, rep := range reps {
			if !rep.OK {
				outcomes[rep.Error.Code]++
				continue
			}
			res := decode[protocol.SignResult](t, rep)
			if serial != "" && res.Serial != serial {
				t.Errorf("request %s got two certificates: serials %s and %s", r.id, serial, res.Serial)
			}
			serial, pemCert = res.Serial, res.Certificate
		}
		if serial != "" {
			outcomes["certificate"]++
			verifyLeaf(t, roots, pemCert)
			sample = pemCert
		}
		if !r.first.Before(killed) && r.first.Before(back) {
			worst = max(worst, r.firstReply.Sub(r.first))
		}
	}
	t.Logf("replies by outcome: %v; worst first answer while a member was down: %v", outcomes, worst)
	if worst > 2*fleetRetry {
		t.Errorf("a request sent after the kill waited %v for its first answer, more than two retry intervals (%v)", worst, 2*fleetRetry)
	}
	if outcomes["certificate"] < len(load.reqs)/2 {
		t.Errorf("only %d of %d requests got a certificate", outcomes["certificate"], len(load.reqs))
	}
	opensslVerify(t, rootPEM, sample)
}

func verifyLeaf(t *testing.T, roots *x509.CertPool, pemCert string) {
	t.Helper()
	b, _ := pem.Decode([]byte(pemCert))
	if b == nil {
		t.Fatal("certificate is not PEM")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("certificate %x does not verify: %v", c.SerialNumber, err)
	}
}

func opensslVerify(t *testing.T, rootPEM, leafPEM string) {
	t.Helper()
	dir := t.TempDir()
	root, leaf := filepath.Join(dir, "root.pem"), filepath.Join(dir, "leaf.pem")
	os.WriteFile(root, []byte(rootPEM), 0o600)
	os.WriteFile(leaf, []byte(leafPEM), 0o600)
	if out, err := exec.Command("openssl", "verify", "-CAfile", root, leaf).CombinedOutput(); err != nil || !strings.Contains(string(out), "OK") {
		t.Errorf("openssl verify: %v: %s", err, out)
	}
}

// checkFleetAudit: across both audit trails, each id is signed at most once, and a
// certificate the PKI holds is the one its audit record names.
func checkFleetAudit(t *testing.T, load *fleetLoad, states ...string) {
	t.Helper()
	signed := map[string][]string{} // id -> serials, over both trails
	for _, st := range states {
		for id, recs := range okSigns(auditRecords(t, st)) {
			for _, r := range recs {
				signed[id] = append(signed[id], r.Serial)
			}
		}
	}
	twice := 0
	for _, r := range load.reqs {
		serials := signed[r.id]
		if len(serials) > 1 {
			twice++
			t.Errorf("request %s signed %d times: serials %v", r.id, len(serials), serials)
		}
		for _, rep := range load.c.Replies(r.id) {
			if rep.OK {
				if res := decode[protocol.SignResult](t, rep); len(serials) != 1 || serials[0] != res.Serial {
					t.Errorf("request %s: the PKI holds serial %s, the audit trails say %v", r.id, res.Serial, serials)
				}
			}
		}
	}
	t.Logf("%d request ids signed, %d of them more than once", len(signed), twice)
}
