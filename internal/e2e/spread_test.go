package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// TestOneCAOnTwoTokens: a CA key imported into two tokens of one appliance signs on
// both: requests on its CA topic go to the token with the fewest waiting.
func TestOneCAOnTwoTokens(t *testing.T) {
	mos := brokertest.StartMosquitto(t)
	dir := t.TempDir()
	var toks []*softhsm.Token
	for _, label := range []string{"spread-a", "spread-b"} {
		tok, err := softhsm.Create(dir, label)
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	t.Setenv("SOFTHSM2_CONF", toks[0].Conf)
	a := start(t, mos.URL, "spread", options{queueSize: 256,
		pkcs11: []config.PKCS11{{Module: toks[0].Module, PIN: toks[0].PIN}}})
	op := newOperator(t, mos.URL)

	keyFile := filepath.Join(t.TempDir(), "ca.key")
	if out, err := exec.Command("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", keyFile).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	keyPEM, _ := os.ReadFile(keyFile)
	var caID, rootPEM string
	for _, tok := range toks {
		res := ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
			protocol.ProvisionArgs{HSM: "pkcs11-" + tok.Serial, Slot: "01", Mode: "import", KeyPEM: string(keyPEM)}))
		caID = res.CAID
		if rootPEM == "" {
			rootPEM = ok[protocol.CertificateResult](t, op.call(a, protocol.CmdSlotSelfSign,
				protocol.ProvisioningCertArgs{SlotID: res.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "Two Token Root", 0))})).Certificate
		} else {
			ok[protocol.SlotShow](t, op.call(a, protocol.CmdSlotImport, protocol.ImportCertArgs{SlotID: res.SlotID, Certificate: rootPEM}))
		}
	}

	const n = 200
	ids := make([]string, n)
	by := map[string]int{}
	topic := a.dev.Topics().CASign(caID)
	csr := leafCSR(t, "node.example.com")
	for i := range ids {
		id, p := op.envelope("", protocol.SignArgs{Kind: protocol.KindCertificate, CSR: csr, Profile: &protocol.Profile{Validity: "1h"}})
		ids[i] = id
		op.publish(topic, p)
	}
	for _, id := range ids {
		res := ok[protocol.SignResult](t, op.wait(id, 1, 2*time.Minute))
		by[strings.Split(res.SlotID, "/")[0]]++
	}
	t.Logf("signatures per token: %v", by)
	if len(by) != 2 {
		t.Fatalf("one CA on two tokens signed on %d of them: %v", len(by), by)
	}
	for hsmID, c := range by {
		if c < n/5 {
			t.Errorf("%s signed %d of %d", hsmID, c, n)
		}
	}
}
