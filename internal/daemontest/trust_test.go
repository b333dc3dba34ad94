package daemontest

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/auth"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// trustCA issues controllers' certificates (with the controller usage) and CRLs.
type trustCA struct{ *pkitest.ControllerCA }

func newTrustCA(t *testing.T, cn string) *trustCA {
	return &trustCA{pkitest.NewControllerCA(t, cn)}
}

// controller is a key and its certificate with the iot-hsm controller usage.
type controller struct {
	key  crypto.Signer
	cert *x509.Certificate
}

func (ca *trustCA) controller(t *testing.T, cn string) controller {
	key, cert := ca.Issue(t, cn, time.Now().Add(time.Hour))
	return controller{key: key, cert: cert}
}

func (ca *trustCA) crl(t *testing.T, revoked ...*x509.Certificate) []byte {
	return ca.CRL(t, revoked...)
}

func writePEMCerts(t *testing.T, path string, cas ...*trustCA) {
	t.Helper()
	var out []byte
	for _, ca := range cas {
		out = append(out, ca.Bundle()...)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// callSigned sends a request signed by c (bound to its topic) and waits for the reply.
func (o *operator) callSigned(c controller, cmd string, args any) protocol.Reply {
	o.t.Helper()
	id, payload := o.Request("", args)
	topic := protocol.DefaultRoot + "/" + o.d.deviceID + "/cmd/" + cmd
	msg, err := auth.Sign(payload, c.key, []*x509.Certificate{c.cert}, topic)
	if err != nil {
		o.t.Fatal(err)
	}
	if err := o.Send(topic, msg); err != nil {
		o.t.Fatal(err)
	}
	return o.reply(id, 30*time.Second)
}

type reloadRes struct {
	Applied         []string `json:"applied"`
	RestartRequired []string `json:"restart_required"`
	Problems        []string `json:"problems"`
}

func refused(t *testing.T, what string, r protocol.Reply, wantMsg string) {
	t.Helper()
	if r.OK || r.Error == nil || r.Error.Code != protocol.CodeUnauthorized || !strings.Contains(r.Error.Message, wantMsg) {
		t.Fatalf("%s: ok=%v error=%+v, want unauthorized saying %q", what, r.OK, r.Error, wantMsg)
	}
}

// TestReloadTrust: [trust] is applied by a reload, whole or not at all. A controllers
// bundle added to a running appliance makes it refuse unsigned commands; a CA taken
// out of the bundle file (same path) no longer signs; a CRL revokes; a CRL from a
// stranger changes nothing and is reported; a changed [ota] is reported as waiting
// for a restart.
func TestReloadTrust(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	d.waitLog("iot-hsm running", 1, 60*time.Second)
	op := newOperator(t, d)
	st := decode[protocol.Status](t, op.call(protocol.CmdStatus, nil))
	provision := protocol.ProvisionArgs{HSM: st.HSMs[0].ID, Slot: "01", Mode: "generate", KeyType: "p256"}

	ca1, ca2 := newTrustCA(t, "controllers one"), newTrustCA(t, "controllers two (compromised)")
	ctl1, ctl2, ctl1b := ca1.controller(t, "pki-one"), ca2.controller(t, "pki-two"), ca1.controller(t, "pki-one-b")
	bundle, crl := filepath.Join(d.dir, "controllers.pem"), filepath.Join(d.dir, "controllers.crl")
	writePEMCerts(t, bundle, ca1, ca2)
	base := fmt.Sprintf(baseConfig, d.deviceID)
	d.writeConfig(base + fmt.Sprintf("\n[trust]\ncontrollers = %q\n", bundle))
	res := decode[reloadRes](t, op.call(protocol.CmdReload, nil))
	if !contains(res.Applied, "trust") {
		t.Fatalf("reload with a new controllers bundle: %+v, want trust applied", res)
	}
	refused(t, "unsigned slot.provision after the bundle was added", op.call(protocol.CmdSlotProvision, provision), "only signed requests")
	decode[protocol.Status](t, op.callSigned(ctl2, protocol.CmdStatus, nil))

	// The compromised CA leaves the bundle file; the path stays the same.
	writePEMCerts(t, bundle, ca1)
	res = decode[reloadRes](t, op.callSigned(ctl1, protocol.CmdReload, nil))
	if !contains(res.Applied, "trust") {
		t.Fatalf("reload with a CA removed from the bundle: %+v, want trust applied", res)
	}
	refused(t, "signed under the removed CA", op.callSigned(ctl2, protocol.CmdStatus, nil), "trusted controller CA")
	decode[protocol.Status](t, op.callSigned(ctl1, protocol.CmdStatus, nil))

	// A CRL from a stranger: nothing changes (the running verifier stays), and the
	// reply says why.
	if err := os.WriteFile(crl, ca2.crl(t, ctl1.cert), 0o644); err != nil {
		t.Fatal(err)
	}
	withCRL := base + fmt.Sprintf("\n[trust]\ncontrollers = %q\ncontrollers_crl = %q\n", bundle, crl)
	d.writeConfig(withCRL)
	res = decode[reloadRes](t, op.callSigned(ctl1, protocol.CmdReload, nil))
	if contains(res.Applied, "trust") || len(res.Problems) != 1 || !strings.Contains(res.Problems[0], "not issued by a CA of the controllers bundle") {
		t.Fatalf("reload with a stranger's CRL: %+v, want a problem and trust not applied", res)
	}
	decode[protocol.Status](t, op.callSigned(ctl1, protocol.CmdStatus, nil))
	refused(t, "the removed CA, after a refused CRL", op.callSigned(ctl2, protocol.CmdStatus, nil), "trusted controller CA")

	// The CA's own CRL revokes one controller; the other keeps working.
	if err := os.WriteFile(crl, ca1.crl(t, ctl1b.cert), 0o644); err != nil {
		t.Fatal(err)
	}
	res = decode[reloadRes](t, op.callSigned(ctl1, protocol.CmdReload, nil))
	if !contains(res.Applied, "trust") || len(res.Problems) != 0 {
		t.Fatalf("reload with the CA's CRL: %+v, want trust applied", res)
	}
	refused(t, "a revoked controller", op.callSigned(ctl1b, protocol.CmdStatus, nil), "revoked")
	decode[protocol.Status](t, op.callSigned(ctl1, protocol.CmdStatus, nil))

	// [ota] is not applied live: it is reported, never ignored.
	d.writeConfig(withCRL + "\n[ota]\nwindow = \"5m\"\n")
	res = decode[reloadRes](t, op.callSigned(ctl1, protocol.CmdReload, nil))
	if !contains(res.RestartRequired, "ota") || contains(res.Applied, "trust") {
		t.Fatalf("reload with [ota] changed: %+v, want ota under restart_required and trust unchanged", res)
	}
}
