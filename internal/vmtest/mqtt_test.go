package vmtest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

const deviceID = "ihsm-vm"

// controller is the PKI: a client of the image's broker over TLS with the test
// controller certificate (CN pki-controller, as dist/mosquitto's ACL names it).
type controller struct {
	*mqtttest.Client
	t  *testing.T
	vm *VM
}

func newController(t *testing.T, vm *VM) *controller {
	t.Helper()
	keys := filepath.Join(vm.image, "keys")
	cfg := mqtt.Config{Broker: fmt.Sprintf("ssl://127.0.0.1:%d", vm.MQTTPort), CleanSession: true,
		CAFile: filepath.Join(keys, "broker-ca.pem"), CertFile: filepath.Join(keys, "controller.pem"),
		KeyFile: filepath.Join(keys, "controller.key"), ConnectTimeout: 30 * time.Second}
	waitBroker(t, cfg)
	id := mqtttest.RandomID()
	o := mqtttest.Options{Name: "pki-controller", ReplyTo: "pkiaas/replies/pki-controller/" + id,
		Watch: []string{protocol.DefaultRoot + "/" + deviceID + "/events"}}
	return &controller{Client: mqtttest.StartWith(t, cfg, o), t: t, vm: vm}
}

// For is c reporting to t (a subtest) instead of the test that made it.
func (c *controller) For(t *testing.T) *controller {
	cc := *c
	cc.t = t
	return &cc
}

// waitBroker waits until the broker in the guest completes a TLS handshake through
// the forwarded port: the service may be up before the broker answers.
func waitBroker(t *testing.T, cfg mqtt.Config) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	addr := strings.TrimPrefix(cfg.Broker, "ssl://")
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, ServerName: "127.0.0.1"}
	var last error
	for end := time.Now().Add(bootTimeout); time.Now().Before(end); time.Sleep(time.Second) {
		d := &net.Dialer{Timeout: 30 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", addr, tc)
		if err == nil {
			conn.Close()
			return
		}
		last = err
	}
	t.Fatalf("the broker at %s: %v", addr, last)
}

// call sends cmd and waits for its reply, sending again (same id) while the daemon
// is away: a restart or a reboot may be under way.
func (c *controller) call(cmd string, args any, timeout time.Duration) protocol.Reply {
	c.t.Helper()
	return c.callID(mqtttest.RandomID(), cmd, args, timeout)
}

func decode[T any](t *testing.T, r protocol.Reply) T {
	t.Helper()
	return mqtttest.Result[T](t, r)
}

func (c *controller) status() protocol.Status {
	return decode[protocol.Status](c.t, c.call(protocol.CmdStatus, nil, 2*time.Minute))
}

func (c *controller) audit() protocol.AuditTailResult {
	return decode[protocol.AuditTailResult](c.t, c.call(protocol.CmdAuditTail, protocol.AuditTailArgs{N: 256}, time.Minute))
}

// phases are the OTA phases announced on the events topic, in order, repeats folded.
func (c *controller) phases() []string {
	return mqtttest.OTAPhases(c.Messages(protocol.DefaultRoot + "/" + deviceID + "/events"))
}

// selfsign makes the generated slot a root CA, which makes it provisioned.
func (c *controller) selfsign(p protocol.Reply) {
	c.t.Helper()
	res := decode[protocol.ProvisionResult](c.t, p)
	args := protocol.ProvisioningCertArgs{SlotID: res.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(c.t, "VM Root", 1))}
	if r := c.call(protocol.CmdSlotSelfSign, args, 2*time.Minute); !r.OK {
		c.t.Fatalf("slot.selfsign: %+v", r.Error)
	}
}

// sameAudit fails unless every record of before is in after, unchanged, and after
// continues the chain.
func sameAudit(t *testing.T, before, after protocol.AuditTailResult) {
	t.Helper()
	if len(after.Records) < len(before.Records) {
		t.Fatalf("the audit trail lost records: %d before, %d after", len(before.Records), len(after.Records))
	}
	for i, r := range before.Records {
		if a := after.Records[i]; a.Hash != r.Hash || a.Seq != r.Seq {
			t.Fatalf("audit record %d changed: %+v -> %+v", r.Seq, r, a)
		}
	}
	for i := 1; i < len(after.Records); i++ {
		if after.Records[i].Prev != after.Records[i-1].Hash {
			t.Fatalf("audit chain broken at %d", after.Records[i].Seq)
		}
	}
}

func slotStates(st protocol.Status) string {
	var parts []string
	for _, s := range st.Slots {
		parts = append(parts, fmt.Sprintf("%s=%s/%v", s.SlotID, s.State, s.Connected))
	}
	return strings.Join(parts, " ")
}

// callID is call with a given request id (to see the reply cache answer it again).
func (c *controller) callID(id, cmd string, args any, timeout time.Duration) protocol.Reply {
	c.t.Helper()
	next := len(c.Raw(id)) + 1
	for end := time.Now().Add(timeout); time.Now().Before(end); {
		_, payload := c.Request(id, args)
		c.Send(protocol.DefaultRoot+"/"+deviceID+"/cmd/"+cmd, payload)
		if r, ok := c.Reply(id, next, 3*time.Second); ok {
			return r
		}
	}
	logs, _ := c.vm.Try("systemctl status --no-pager iot-hsm mosquitto | head -30; journalctl -b --no-pager -u iot-hsm -u mosquitto | tail -40")
	c.t.Fatalf("no reply to %s %s within %v; the guest says:\n%s", cmd, id, timeout, logs)
	return protocol.Reply{}
}
