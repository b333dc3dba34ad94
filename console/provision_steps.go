package console

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/iot-hsm/iot-hsm/protocol"
)

var keyTypes = []string{"rsa2048", "rsa3072", "rsa4096", "p256", "p384"}

// makeKey generates, imports or takes over the slot's key.
func (w *wizard) makeKey() error {
	mode, err := w.answer("mode", w.f.mode, "Key: generate on the HSM, import a PEM key, or use an existing key (g/i/e)", "generate",
		func(a string) (string, error) {
			for _, m := range []string{"generate", "import", "existing"} {
				if strings.EqualFold(a, m) || strings.EqualFold(a, m[:1]) {
					return m, nil
				}
			}
			return "", badAnswerf("%q: answer generate, import or existing", a)
		})
	if err != nil {
		return err
	}
	a := protocol.ProvisionArgs{HSM: w.hsm.ID, Slot: w.slot, Mode: mode, Label: w.f.label}
	switch mode {
	case "generate":
		a.KeyType, err = w.answer("key-type", w.f.keyType, "Key type ("+strings.Join(keyTypes, ", ")+")", "p256",
			func(a string) (string, error) {
				if contains(keyTypes, strings.ToLower(a)) {
					return strings.ToLower(a), nil
				}
				return "", badAnswerf("%q: answer one of %s", a, strings.Join(keyTypes, ", "))
			})
	case "import":
		err = w.importKey(&a)
	}
	if err != nil {
		return err
	}
	if !w.s.opts.timeoutSet {
		w.s.opts.timeout = provisionTimeout
	}
	stop := w.s.progress(fmt.Sprintf("%s: %s %s key", w.slotID, mode, a.KeyType))
	var res protocol.ProvisionResult
	err = w.call(protocol.CmdSlotProvision, a, &res)
	stop()
	if !w.s.opts.timeoutSet {
		w.s.opts.timeout = defaultTimeout
	}
	if err != nil {
		return err
	}
	w.slotID = res.SlotID
	if res.State == "provisioned" {
		w.tookOver = true
		w.say("Slot %s is provisioned: %s (%s, ca_id %s)", res.SlotID, res.Note, res.KeyType, res.CAID)
		return nil
	}
	w.say("Key ready in %s: %s, ca_id %s", res.SlotID, res.KeyType, res.CAID)
	return nil
}

// importKey reads the key to import; it is a secret, so it comes from a file only.
func (w *wizard) importKey(a *protocol.ProvisionArgs) error {
	path, err := w.answer("key-pem", w.f.keyPEM, "Private key to import (PEM file)", "", func(p string) (string, error) {
		if _, err := os.Stat(p); err != nil {
			return "", badAnswerf("%v", err)
		}
		return p, nil
	})
	if err != nil {
		return err
	}
	if a.KeyPEM, err = w.s.readSecret("key-pem", path); err != nil {
		return err
	}
	a.KeyPEM += "\n"
	if w.f.keyPassword != "" {
		a.KeyPassword, err = w.s.readSecret("key-password-file", w.f.keyPassword)
	}
	return err
}

// certify takes the provisioning certificate and makes a root or a CSR.
func (w *wizard) certify() error {
	prov, err := w.provisioningCert()
	if err != nil {
		return err
	}
	as, err := w.answer("as", w.f.as, "Make it a self-signed root, or an intermediate whose CSR another CA signs (root/csr)", "root",
		func(a string) (string, error) {
			switch strings.ToLower(a) {
			case "root", "r":
				return "root", nil
			case "csr", "c", "intermediate", "i":
				return "csr", nil
			}
			return "", badAnswerf("%q: answer root or csr", a)
		})
	if err != nil {
		return err
	}
	args := protocol.ProvisioningCertArgs{SlotID: w.slotID, ProvisioningCert: prov}
	if as == "root" {
		var res protocol.CertificateResult
		if err := w.call(protocol.CmdSlotSelfSign, args, &res); err != nil {
			return err
		}
		return w.showResult()
	}
	var res protocol.CSRResult
	if err := w.call(protocol.CmdSlotCSR, args, &res); err != nil {
		return err
	}
	path, err := w.writeCSR(res.CSR)
	if err != nil {
		return err
	}
	return w.takeCert(path)
}

// provisioningCert reads it from --provisioning-cert, or asks for a path or a paste.
func (w *wizard) provisioningCert() (string, error) {
	if w.f.provCert != "" {
		return w.s.readPEM("provisioning-cert", w.f.provCert)
	}
	if !w.ask {
		return "", usagef("--provisioning-cert is required (no terminal to ask on)")
	}
	for {
		text, from, err := w.s.askPEM("Provisioning certificate (PEM file, or paste it and end with an empty line)")
		if err == nil && text != "" {
			w.say("  provisioning certificate: %s (%s)", certSummary(text), from)
			return text, nil
		}
		if err != nil && !isBadAnswer(err) {
			return "", err
		}
		if err != nil {
			w.say("  %v", err)
		}
	}
}

func isBadAnswer(err error) bool { return errors.Is(err, errBadAnswer) }

// writeCSR shows the CSR and writes it where the operator can take it to the CA.
func (w *wizard) writeCSR(csr string) (string, error) {
	def := strings.ReplaceAll(w.slotID, "/", "_") + ".csr"
	path, err := w.answer("csr-out", w.f.csrOut, "Write the CSR to", def, func(p string) (string, error) {
		return p, writeFile(p, csr)
	})
	if err != nil {
		return "", err
	}
	w.say("\n%sCSR for %s, written to %s: have it signed by the issuing CA.", ensureNewline(csr), csrSummary(csr), path)
	return path, nil
}

// takeCert imports the signed certificate, or says how to go on later.
func (w *wizard) takeCert(csrPath string) error {
	cert, chain, err := w.signedCert()
	if err != nil {
		return err
	}
	if cert == "" {
		w.say("Slot %s stays csr_pending. When the certificate is signed, go on with:\n  iot-hsm console provision --slot %s --certificate CERT.pem [--chain CHAIN.pem]",
			w.slotID, w.slotID)
		return nil
	}
	var res protocol.SlotShow
	if err := w.call(protocol.CmdSlotImport, protocol.ImportCertArgs{SlotID: w.slotID, Certificate: cert, Chain: chain}, &res); err != nil {
		return err
	}
	return w.showResult()
}

// signedCert reads the certificate (and chain) from the flags or asks for them; a
// pasted bundle is split into the certificate and its chain.
func (w *wizard) signedCert() (cert, chain string, err error) {
	switch {
	case w.f.certificate != "":
		if cert, err = w.s.readPEM("certificate", w.f.certificate); err == nil && w.f.chain != "" {
			chain, err = w.s.readPEM("chain", w.f.chain)
		}
		return splitBundle(cert, chain, err)
	case !w.ask:
		return "", "", nil
	}
	for {
		cert, _, err = w.s.askPEM("Signed certificate (PEM file or paste; empty line: stop here and go on later)")
		if !isBadAnswer(err) {
			break
		}
		w.say("  %v", err)
	}
	if err != nil || cert == "" {
		return "", "", err
	}
	if strings.Count(cert, "-----BEGIN CERTIFICATE-----") == 1 {
		for {
			chain, _, err = w.s.askPEM("Its issuers' certificates (PEM file or paste; empty line: the appliance has them)")
			if !isBadAnswer(err) {
				break
			}
			w.say("  %v", err)
		}
	}
	return splitBundle(cert, chain, err)
}

// splitBundle keeps the first certificate of cert and moves the rest into the chain.
func splitBundle(cert, chain string, err error) (string, string, error) {
	if err != nil {
		return "", "", err
	}
	block, rest := pem.Decode([]byte(cert))
	if block == nil {
		return cert, chain, nil
	}
	first := string(pem.EncodeToMemory(block))
	if extra := strings.TrimSpace(string(rest)); extra != "" {
		chain = ensureNewline(extra) + chain
	}
	return first, chain, nil
}

// showResult shows the finished slot: its certificate and the chain to its root.
func (w *wizard) showResult() error {
	var sl protocol.SlotShow
	if err := w.call(protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: w.slotID}, &sl); err != nil {
		return err
	}
	w.say("\nProvisioning complete: %s is %s.", sl.SlotID, sl.State)
	tw := table(w.s.stdout)
	line := func(k, v string) { fmt.Fprintf(tw, "  %s:\t%s\n", k, v) }
	c := parseCert(sl.Certificate)
	if c != nil {
		line("subject", c.Subject.String())
		line("issuer", c.Issuer.String())
		line("serial", fmt.Sprintf("%x", c.SerialNumber))
		line("not after", c.NotAfter.UTC().Format("2006-01-02T15:04:05Z"))
	}
	line("key", dash(sl.KeyType))
	line("ca_id", dash(sl.CAID))
	tw.Flush()
	w.say("  chain:")
	for i, cc := range chainOf(sl) {
		note := "issued by " + cc.Issuer.String()
		if cc.CheckSignatureFrom(cc) == nil {
			note = "self-signed root"
		}
		w.say("    %d %s (%s)", i, cc.Subject, note)
	}
	return w.saveCert(sl)
}

func chainOf(sl protocol.SlotShow) []*x509.Certificate {
	var out []*x509.Certificate
	rest := []byte(sl.Certificate + "\n" + sl.Chain)
	for {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			return out
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

// saveCert writes the certificate and its chain for the operator's PKI.
func (w *wizard) saveCert(sl protocol.SlotShow) error {
	def := strings.ReplaceAll(sl.SlotID, "/", "_") + ".pem"
	if !w.ask && w.f.out == "" {
		return nil
	}
	bundle := ensureNewline(sl.Certificate) + sl.Chain
	path, err := w.answer("out", w.f.out, "Save the certificate and its chain to", def, func(p string) (string, error) {
		return p, writeFile(p, bundle)
	})
	if err != nil {
		return err
	}
	w.say("Certificate and chain written to %s.", path)
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
