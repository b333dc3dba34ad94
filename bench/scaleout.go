package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// scaleInFlight is the load of the scale-out rows: enough to keep two tokens busy.
const scaleInFlight = 16

// scaleRows compare one CA key on one token with the same key on two tokens of one
// appliance, and one fleet member with two appliances serving the CA topic together:
// certificates at scaleInFlight in flight, P-384 (SoftHSM2's signature is then the
// larger part of a request).
func (b *bench) scaleRows() {
	csr, err := leafCSR("node.example.com")
	if err != nil {
		b.fail(secScale, "csr", err)
		return
	}
	args, _ := json.Marshal(protocol.SignArgs{Kind: protocol.KindCertificate, CSR: csr,
		Profile: &protocol.Profile{Validity: "720h", KeyUsage: []string{"digital_signature"}, ExtKeyUsage: []string{"server_auth"}}})
	// A key, hence a CA topic, per comparison: an appliance stopped before keeps its
	// persistent session's share of its CA topic at the broker.
	for _, rows := range []func(json.RawMessage, string){b.tokensRows, b.fleetRows, b.yubikeyRows} {
		key, err := sharedKeyPEM()
		if err != nil {
			b.fail(secScale, "key", err)
			return
		}
		rows(args, key)
	}
}

// sharedKeyPEM is the CA key imported into every token, PKCS#8 PEM.
func sharedKeyPEM() (string, error) {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), err
}

// scaleMember is an appliance of the scale-out rows and the HSM its CA key goes to.
type scaleMember struct {
	a     *appliance.Appliance
	hsmID string
}

func (m scaleMember) stop() {
	if m.a.Stop() {
		m.a.Close()
	}
}

// importCA puts the key into slot 01 of the member's HSM with the CA certificate:
// self-signed when certPEM is empty, else the one given. It returns the ca_id and
// the certificate.
func importCA(o *operator, m scaleMember, keyPEM, certPEM string) (string, string, error) {
	return importCASlot(o, m, "01", keyPEM, certPEM)
}

// importCASlot is importCA into the given slot.
func importCASlot(o *operator, m scaleMember, slot, keyPEM, certPEM string) (string, string, error) {
	topics := m.a.Device.Topics()
	res, err := command[protocol.ProvisionResult](o, topics, protocol.CmdSlotProvision,
		protocol.ProvisionArgs{HSM: m.hsmID, Slot: slot, Mode: "import", KeyPEM: keyPEM})
	if err != nil {
		return "", "", err
	}
	if certPEM != "" {
		_, err = command[protocol.SlotShow](o, topics, protocol.CmdSlotImport, protocol.ImportCertArgs{SlotID: res.SlotID, Certificate: certPEM})
		return res.CAID, certPEM, err
	}
	prov, err := ca.MakeProvisioningCert(ca.ProvisioningOptions{Subject: pkix.Name{CommonName: "Bench scale-out CA"},
		Validity: 10 * 365 * 24 * time.Hour, MaxPathLen: 1, PermittedDNSDomains: []string{"example.com"}})
	if err != nil {
		return "", "", err
	}
	cert, err := command[protocol.CertificateResult](o, topics, protocol.CmdSlotSelfSign,
		protocol.ProvisioningCertArgs{SlotID: res.SlotID, ProvisioningCert: string(prov)})
	return res.CAID, cert.Certificate, err
}

// measure runs the scale-out load on a CA topic; onWindow, when given, brackets the
// measured window.
func (b *bench) measure(o *operator, caID string, args json.RawMessage, onWindow ...func() (stop func())) (loadResult, error) {
	spec := loadSpec{topic: protocol.Topics{Root: protocol.DefaultRoot}.CASign(caID), args: args,
		inflight: scaleInFlight, warmup: b.warmup, window: b.window, brokerPID: b.mos.PID()}
	if len(onWindow) > 0 {
		spec.onWindow = onWindow[0]
	}
	return runLoad(o, spec)
}

// scalePair writes the rows of one comparison: the base, and the doubled set-up
// against the 1.8× target, with the reason when it is missed.
func (b *bench) scalePair(baseName, twoName string, base, two loadResult, cpuBound bool) {
	b.rows = append(b.rows, Row{Section: secScale, Name: baseName, Value: val(base.Rate), Unit: "certificates/s",
		Metrics: scaleMetrics(base), Note: scaleNote(base)})
	ratio := two.Rate / base.Rate
	row := Row{Section: secScale, Name: twoName, Value: val(two.Rate), Unit: "certificates/s", Metrics: scaleMetrics(two),
		Target: "≥ 1.8× the row above", Status: verdict(ratio >= 1.8), Note: fmt.Sprintf("%.2f× the row above; %s", ratio, scaleNote(two))}
	row.Metrics["ratio"] = ratio
	if ratio < 1.8 && cpuBound {
		used := two.CPUSelf + two.CPUBroker + two.CPUOthers
		row.Reason = fmt.Sprintf("the machine has %d cores and the run used %.2f of them (appliances with their tokens %.2f, mosquitto %.2f, others %.2f): "+
			"SoftHSM2 signs on the same CPUs as everything else, so a second token or appliance adds no signing capacity here; "+
			"the per-signature-delay rows below show the scale-out where the token, not the CPU, is the limit",
			runtime.NumCPU(), used, two.CPUSelf, two.CPUBroker, two.CPUOthers)
	}
	b.rows = append(b.rows, row)
	progress("%s: %.0f/s; %s: %.0f/s (%.2f×)", baseName, base.Rate, twoName, two.Rate, ratio)
}

func scaleMetrics(r loadResult) map[string]float64 {
	return map[string]float64{"p50_ms": r.P50, "p99_ms": r.P99, "cpu_self_cores": r.CPUSelf, "cpu_broker_cores": r.CPUBroker,
		"cpu_others_cores": r.CPUOthers, "completed": float64(r.Completed), "errors": float64(r.Errors)}
}

func scaleNote(r loadResult) string {
	n := fmt.Sprintf("%d in flight, p50 %.1f ms, p99 %.1f ms", scaleInFlight, r.P50, r.P99)
	if r.Errors > 0 {
		n += fmt.Sprintf("; %d errors, first: %s", r.Errors, r.FirstErr)
	}
	return n
}

// tokensRows: one appliance with two SoftHSM2 tokens; the CA on the first, then on both.
func (b *bench) tokensRows(args json.RawMessage, key string) {
	dir := filepath.Join(b.work, "scale-tokens")
	var toks []*softhsm.Token
	for _, label := range []string{"scale-a", "scale-b"} {
		tok, err := softhsm.Create(dir, label)
		if err != nil {
			b.fail(secScale, "two tokens", err)
			return
		}
		toks = append(toks, tok)
	}
	os.Setenv("SOFTHSM2_CONF", toks[0].Conf)
	a, err := startAppliance(b.mos.URL, "bench-tokens-"+randomHex(3), dir, toks[0], func(c *config.Config) {
		c.PKCS11 = []config.PKCS11{{Module: toks[0].Module, PIN: toks[0].PIN}} // every token of the module
	})
	if err != nil {
		b.fail(secScale, "two tokens", err)
		return
	}
	defer scaleMember{a: a}.stop()
	o, err := newOperator(b.mos.URL)
	if err != nil {
		b.fail(secScale, "two tokens", err)
		return
	}
	defer o.close()
	var base, two loadResult
	cert := ""
	for i, tok := range toks {
		caID, c, err := importCA(o, scaleMember{a: a, hsmID: "pkcs11-" + tok.Serial}, key, cert)
		if err == nil {
			cert = c
			var r loadResult
			if r, err = b.measure(o, caID, args); i == 0 {
				base = r
			} else {
				two = r
			}
		}
		if err != nil {
			b.fail(secScale, "two tokens", err)
			return
		}
	}
	b.scalePair("one appliance, the CA key on one SoftHSM2 token (p384 certificates)",
		"one appliance, the same CA key on two SoftHSM2 tokens", base, two, true)
}

// fleetRows: two fleet members, one SoftHSM2 token each; the CA on the first, then on both.
func (b *bench) fleetRows(args json.RawMessage, key string) {
	o, err := newOperator(b.mos.URL)
	if err != nil {
		b.fail(secScale, "fleet", err)
		return
	}
	defer o.close()
	var members []scaleMember
	defer func() {
		for _, m := range members {
			m.stop()
		}
	}()
	var base, two loadResult
	cert := ""
	for i := range 2 {
		dir := filepath.Join(b.work, fmt.Sprintf("scale-fleet-%d", i))
		tok, err := softhsm.Create(dir, "fleet")
		if err == nil {
			// Each member's private copy of the module reads its token's configuration once, when loaded.
			os.Setenv("SOFTHSM2_CONF", tok.Conf)
			var a *appliance.Appliance
			if a, err = startAppliance(b.mos.URL, fmt.Sprintf("bench-fleet%d-%s", i, randomHex(3)), dir, tok,
				func(c *config.Config) { c.Fleet.Enabled = true }); err == nil {
				members = append(members, scaleMember{a: a, hsmID: "pkcs11-" + tok.Serial})
			}
		}
		var caID string
		if err == nil {
			caID, cert, err = importCA(o, members[i], key, cert)
		}
		var r loadResult
		if err == nil {
			r, err = b.measure(o, caID, args)
		}
		if err != nil {
			b.fail(secScale, "fleet", err)
			return
		}
		if i == 0 {
			base = r
		} else {
			two = r
		}
	}
	b.scalePair("one fleet member on the CA topic (one SoftHSM2 token, p384 certificates)",
		"two fleet members (two appliances, one token each) on the CA topic", base, two, true)
}
