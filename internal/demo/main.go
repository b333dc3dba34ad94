// Command demo walks the seed's provisioning workflow on a SoftHSM2 token made for
// the occasion: a root CA from a provisioning certificate, an intermediate through a
// CSR, and openssl verifying both. `make demo` runs it.
package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/store"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run() error {
	out, err := filepath.Abs("demo-out")
	if err != nil {
		return err
	}
	os.RemoveAll(out)
	step("creating a SoftHSM2 token and a state directory in %s", out)
	tok, err := softhsm.Create(filepath.Join(out, "softhsm"), "iot-hsm-demo")
	if err != nil {
		return err
	}
	os.Setenv("SOFTHSM2_CONF", tok.Conf)
	mod, err := pkcs11.Open(tok.Module)
	if err != nil {
		return err
	}
	defer mod.Close()
	ctx := context.Background()
	t, err := mod.Token(ctx, tok.Serial)
	if err != nil {
		return err
	}
	if err := t.Login(ctx, tok.PIN); err != nil {
		return err
	}
	st, err := store.Open(filepath.Join(out, "state"))
	if err != nil {
		return err
	}
	defer st.Close()
	reg := device.NewRegistry(mod)
	if err := reg.Rescan(ctx); err != nil {
		return err
	}
	slots := &device.Slots{Store: st, Registry: reg}
	hsmID := t.Info().ID

	step("provisioning slot %s/01: a P-256 key generated inside the token", hsmID)
	rootRec, err := slots.Provision(ctx, device.ProvisionArgs{HSM: hsmID, Slot: "01", Mode: device.ModeGenerate, KeyType: hsm.P256, Label: "demo root"})
	if err != nil {
		return err
	}
	fmt.Printf("    ca_id %s\n", rootRec.CAID)

	step("self-signing a root CA from a provisioning certificate")
	prov, err := ca.MakeProvisioningCert(ca.ProvisioningOptions{
		Subject: pkix.Name{CommonName: "iot-hsm Demo Root CA", Organization: []string{"iot-hsm demo"}}, Validity: 10 * 365 * 24 * time.Hour, MaxPathLen: 1,
	})
	if err != nil {
		return err
	}
	root, err := slots.SelfSign(ctx, rootRec.ID, prov)
	if err != nil {
		return err
	}
	if err := write(out, "root.pem", ca.EncodeCertificatePEM(root)); err != nil {
		return err
	}

	step("provisioning slot %s/02 (P-384) as an intermediate: CSR from a provisioning certificate", hsmID)
	intRec, err := slots.Provision(ctx, device.ProvisionArgs{HSM: hsmID, Slot: "02", Mode: device.ModeGenerate, KeyType: hsm.P384, Label: "demo issuing CA"})
	if err != nil {
		return err
	}
	prov2, err := ca.MakeProvisioningCert(ca.ProvisioningOptions{
		Subject: pkix.Name{CommonName: "iot-hsm Demo Issuing CA", Organization: []string{"iot-hsm demo"}}, Validity: 5 * 365 * 24 * time.Hour, MaxPathLen: 0,
	})
	if err != nil {
		return err
	}
	csr, err := slots.CSR(ctx, intRec.ID, prov2)
	if err != nil {
		return err
	}
	if err := write(out, "intermediate.csr", ca.EncodeCSRPEM(csr)); err != nil {
		return err
	}

	step("the root (slot 01, inside the token) signs the intermediate's CSR")
	rootKey, err := t.Signer(ctx, "01")
	if err != nil {
		return err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	ski, _ := ca.SubjectKeyID(csr.PublicKey)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, Subject: csr.Subject, SubjectKeyId: ski,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(5 * 365 * 24 * time.Hour),
		ExtraExtensions: csr.Extensions,
	}, root, csr.PublicKey, rootKey)
	if err != nil {
		return err
	}
	step("importing the signed intermediate into slot 02")
	interm, err := slots.ImportCert(ctx, intRec.ID, pemOf(der), nil)
	if err != nil {
		return err
	}
	if err := write(out, "intermediate.pem", ca.EncodeCertificatePEM(interm)); err != nil {
		return err
	}

	step("verifying with openssl")
	for _, args := range [][]string{
		{"verify", "-x509_strict", "-CAfile", "root.pem", "root.pem"},
		{"verify", "-x509_strict", "-CAfile", "root.pem", "intermediate.pem"},
	} {
		cmd := exec.Command("openssl", args...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = out, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("openssl %v: %w", args, err)
		}
	}
	step("what the token holds (pkcs11-tool)")
	listing, err := tok.Tool("--list-objects", "--login", "--pin", tok.PIN)
	if err != nil {
		return fmt.Errorf("pkcs11-tool: %v: %s", err, listing)
	}
	fmt.Print(listing)
	recs, _ := st.Slots()
	for _, r := range recs {
		fmt.Printf("slot %-32s %-12s %s\n", r.ID, r.State, r.KeyType)
	}
	step("done: certificates in %s", out)
	return nil
}

func pemOf(der []byte) []byte {
	c, _ := x509.ParseCertificate(der)
	return ca.EncodeCertificatePEM(c)
}

func write(dir, name string, data []byte) error {
	return os.WriteFile(filepath.Join(dir, name), data, 0o644)
}
