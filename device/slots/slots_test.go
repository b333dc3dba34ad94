//go:build cgo

package slots

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/pemkey"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/store"
)

// rig is an appliance core over a real SoftHSM2 token and a real state directory.
type rig struct {
	tok      *softhsm.Token
	stateDir string
	mod      *pkcs11.Module
	slots    *Slots
	hsmID    string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{tok: softhsmtest.New(t, "device-test"), stateDir: t.TempDir()}
	r.open(t)
	return r
}

// open starts the core as the daemon does at start-up: load the module, log in, open
// the state store.
func (r *rig) open(t *testing.T) {
	t.Helper()
	mod, err := pkcs11.Open(r.tok.Module)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok, err := mod.Token(ctx, r.tok.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Login(ctx, r.tok.PIN); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(r.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	reg := NewRegistry(mod)
	if err := reg.Rescan(ctx); err != nil {
		t.Fatal(err)
	}
	r.mod, r.hsmID = mod, tok.Info().ID
	r.slots = &Slots{Store: st, Registry: reg}
	t.Cleanup(r.close)
}

func (r *rig) close() {
	if r.slots != nil {
		r.slots.Store.Close()
		r.mod.Close()
		r.slots = nil
	}
}

func TestRootForEveryKeyType(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	prov := provisioningCert(t, "Lab Root", 1)
	tmpl, _ := ca.ParseCertificatePEM(prov)
	for i, kt := range hsm.KeyTypes {
		slot := []string{"01", "02", "03", "04", "05"}[i]
		t.Run(string(kt), func(t *testing.T) {
			rec, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: slot, Mode: ModeGenerate, KeyType: kt})
			if err != nil {
				t.Fatal(err)
			}
			if rec.State != store.KeyReady || rec.KeyType != string(kt) || len(rec.CAID) != 64 {
				t.Fatalf("after provision: %+v", rec)
			}
			root, err := r.slots.SelfSign(ctx, rec.ID, prov)
			if err != nil {
				t.Fatal(err)
			}
			pool := x509.NewCertPool()
			pool.AddCert(root)
			if _, err := root.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
				t.Fatalf("Go does not verify the root: %v", err)
			}
			pkitest.OpenSSLVerify(t, root, []*x509.Certificate{root})
			if problems := pkitest.LintProblems(t, root); len(problems) > 0 {
				t.Fatalf("zlint errors on the root:\n%s", strings.Join(problems, "\n"))
			}
			if string(root.RawSubject) != string(tmpl.RawSubject) || string(root.RawIssuer) != string(tmpl.RawSubject) {
				t.Fatal("root subject/issuer differ from the provisioning certificate's subject")
			}
			for _, want := range tmpl.Extensions {
				if want.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 14}) || want.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 35}) {
					continue
				}
				if !hasExt(root, want) {
					t.Errorf("extension %v of the template is missing or changed", want.Id)
				}
			}
			if got, want := root.NotAfter.Sub(root.NotBefore), tmpl.NotAfter.Sub(tmpl.NotBefore); got != want {
				t.Errorf("validity %v, want the template's %v", got, want)
			}
			if !root.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(mustPub(t, r, slot)) {
				t.Fatal("root is not for the slot key")
			}
			onToken, err := hsm.Certificate(ctx, mustToken(t, r), slot)
			if err != nil || !onToken.Equal(root) {
				t.Fatalf("root not stored on the token: %v", err)
			}
			rec, _ = r.slots.Show(rec.ID)
			if rec.State != store.Provisioned || rec.Certificate == "" {
				t.Fatalf("after selfsign: %+v", rec)
			}
		})
	}
}

func hasExt(c *x509.Certificate, want pkix.Extension) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal(want.Id) {
			return e.Critical == want.Critical && string(e.Value) == string(want.Value)
		}
	}
	return false
}

func mustToken(t *testing.T, r *rig) hsm.Token {
	tok, err := r.slots.Registry.Token(r.hsmID)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func mustPub(t *testing.T, r *rig, slot string) crypto.PublicKey {
	pub, err := mustToken(t, r).PublicKey(context.Background(), slot)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// signCSR plays the parent CA of the PKI: it issues the intermediate from the CSR.
func signCSR(t *testing.T, csr *x509.CertificateRequest, parent *x509.Certificate, key crypto.Signer, notAfter time.Time) *x509.Certificate {
	t.Helper()
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signature does not verify: %v", err)
	}
	ski, _ := ca.SubjectKeyID(csr.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: csr.Subject,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: notAfter,
		BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, SubjectKeyId: ski,
		ExtraExtensions: csr.Extensions,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, csr.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// rootCA provisions slot as a root and returns its certificate and signer.
// issuingCSR makes a root in slot 01 and an intermediate's key in slot 02, and
// returns the root, its key, the intermediate's record and its CSR.
func issuingCSR(t *testing.T, r *rig) (*x509.Certificate, crypto.Signer, store.Slot, *x509.CertificateRequest) {
	t.Helper()
	ctx := context.Background()
	root, rootKey := rootCA(t, r, "01")
	rec, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: "02", Mode: ModeGenerate, KeyType: hsm.P256})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := r.slots.CSR(ctx, rec.ID, provisioningCert(t, "Lab Issuing CA", 0))
	if err != nil {
		t.Fatal(err)
	}
	return root, rootKey, rec, csr
}

func rootCA(t *testing.T, r *rig, slot string) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	ctx := context.Background()
	rec, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: slot, Mode: ModeGenerate, KeyType: hsm.P384})
	if err != nil {
		t.Fatal(err)
	}
	root, err := r.slots.SelfSign(ctx, rec.ID, provisioningCert(t, "Lab Root", 1))
	if err != nil {
		t.Fatal(err)
	}
	s, err := mustToken(t, r).Signer(ctx, slot)
	if err != nil {
		t.Fatal(err)
	}
	return root, s
}

func TestIntermediateFromCSR(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	root, rootKey := rootCA(t, r, "0f")

	rec, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: "10", Mode: ModeGenerate, KeyType: hsm.P256})
	if err != nil {
		t.Fatal(err)
	}
	prov := provisioningCert(t, "Lab Issuing CA", 0)
	csr, err := r.slots.CSR(ctx, rec.ID, prov)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, _ := ca.ParseCertificatePEM(prov)
	if string(csr.RawSubject) != string(tmpl.RawSubject) {
		t.Fatal("CSR subject is not the template's")
	}
	if rec, _ := r.slots.Show(rec.ID); rec.State != store.CSRPending || rec.CSR == "" {
		t.Fatalf("after csr: %+v", rec)
	}
	interm := signCSR(t, csr, root, rootKey, root.NotAfter.Add(-time.Hour))

	// With the chain given, and (in a second slot state) with the root known.
	if _, err := r.slots.ImportCert(ctx, rec.ID, ca.EncodeCertificatePEM(interm), ca.EncodeCertificatePEM(root)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.slots.ImportCert(ctx, rec.ID, ca.EncodeCertificatePEM(interm), nil); err != nil {
		t.Fatalf("re-associate with the root known to the appliance: %v", err)
	}
	got, err := r.slots.Show(rec.ID)
	if err != nil || got.State != store.Provisioned {
		t.Fatalf("after import: %+v %v", got, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := interm.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Fatalf("Go does not verify the chain: %v", err)
	}
	pkitest.OpenSSLVerify(t, interm, []*x509.Certificate{root})
	onToken, err := hsm.Certificate(ctx, mustToken(t, r), "10")
	if err != nil || !onToken.Equal(interm) {
		t.Fatalf("intermediate not stored on the token: %v", err)
	}
}

func TestBadImportsLeaveStateUnchanged(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	root, rootKey, rec, csr := issuingCSR(t, r)
	before, _ := r.slots.Show(rec.ID)

	// A CA certificate for another key: the root's own.
	otherKey := ca.EncodeCertificatePEM(root)
	// A leaf certificate for the slot key.
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, csr.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pemCert(der)

	cases := []struct {
		name string
		cert []byte
		want error
	}{
		{"certificate for another key", otherKey, ca.ErrKeyMismatch},
		{"not a CA certificate", leaf, ca.ErrNotCA},
		{"garbage PEM", []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), ErrBadRequest},
		{"a key, not a certificate", []byte(before.PublicKey), ErrBadRequest},
	}
	for _, c := range cases {
		_, err := r.slots.ImportCert(ctx, rec.ID, c.cert, nil)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
		after, _ := r.slots.Show(rec.ID)
		if !reflect.DeepEqual(before, after) {
			t.Errorf("%s changed the slot:\nbefore %+v\nafter  %+v", c.name, before, after)
		}
	}
	if _, err := hsm.Certificate(ctx, mustToken(t, r), "02"); !errors.Is(err, hsm.ErrNotFound) {
		t.Errorf("a refused certificate reached the token: %v", err)
	}

	// Wrong state and unknown slot are typed too.
	if _, err := r.slots.SelfSign(ctx, r.hsmID+"/01", provisioningCert(t, "again", 1)); !errors.Is(err, ErrConflict) {
		t.Errorf("selfsign on a provisioned slot: %v, want ErrConflict", err)
	}
	if _, err := r.slots.CSR(ctx, r.hsmID+"/7e", provisioningCert(t, "x", 0)); !errors.Is(err, hsm.ErrNotFound) {
		t.Errorf("csr on an unknown slot: %v, want ErrNotFound", err)
	}
	if _, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: "02", Mode: ModeGenerate, KeyType: hsm.P256}); !errors.Is(err, ErrConflict) {
		t.Errorf("provision over a slot in use: %v, want ErrConflict", err)
	}
	if after, _ := r.slots.Show(rec.ID); !reflect.DeepEqual(before, after) {
		t.Error("refused commands changed the slot")
	}
}

func pemCert(der []byte) []byte {
	c, _ := x509.ParseCertificate(der)
	return ca.EncodeCertificatePEM(c)
}

// openssl runs the real openssl to make key files the way operators do.
func openssl(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestImportKeyFromEveryPEMForm(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	openssl(t, "genrsa", "-traditional", "-out", p("pkcs1.pem"), "2048")
	openssl(t, "ecparam", "-genkey", "-name", "secp384r1", "-out", p("sec1.pem"))
	openssl(t, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p("pkcs8.pem"))
	openssl(t, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-aes-256-cbc", "-pass", "pass:s3cret", "-out", p("enc.pem"))

	for i, f := range []string{"pkcs1.pem", "sec1.pem", "pkcs8.pem", "enc.pem"} {
		slot := []string{"31", "32", "33", "34"}[i]
		data, _ := os.ReadFile(p(f))
		pw := []byte(nil)
		if f == "enc.pem" {
			// A wrong password first: typed, and nothing on the token or in the store.
			_, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: slot, Mode: ModeImport, KeyPEM: data, KeyPassword: []byte("wrong")})
			if !errors.Is(err, ErrBadRequest) || !errors.Is(err, pemkey.ErrBadPassword) {
				t.Fatalf("wrong password: %v", err)
			}
			if strings.Contains(err.Error(), "wrong") && strings.Contains(err.Error(), "s3cret") {
				t.Fatal("error message carries a password")
			}
			if _, err := r.slots.Show(r.hsmID + "/" + slot); !errors.Is(err, hsm.ErrNotFound) {
				t.Fatalf("slot recorded after a failed import: %v", err)
			}
			pw = []byte("s3cret")
		}
		rec, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: slot, Mode: ModeImport, KeyPEM: data, KeyPassword: pw})
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		// The token holds the key from the file: its public half matches openssl's view.
		openssl(t, "pkey", "-in", p(f), "-passin", "pass:s3cret", "-pubout", "-out", p(f+".pub"))
		want, _ := os.ReadFile(p(f + ".pub"))
		if strings.TrimSpace(rec.PublicKey) != strings.TrimSpace(string(want)) {
			t.Fatalf("%s: public key on the token differs from the file's", f)
		}
		if _, err := r.slots.SelfSign(ctx, rec.ID, provisioningCert(t, "Imported "+f, 1)); err != nil {
			t.Fatalf("%s: the imported key does not sign: %v", f, err)
		}
	}
	if _, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: "35", Mode: ModeImport, KeyPEM: []byte("garbage")}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("garbage key: %v", err)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	root, _ := rootCA(t, r, "01")
	rec, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: "02", Mode: ModeGenerate, KeyType: hsm.RSA2048})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.slots.CSR(ctx, rec.ID, provisioningCert(t, "Pending", 0)); err != nil {
		t.Fatal(err)
	}
	before, _ := r.slots.Store.Slots()

	r.close() // the process stops
	r.open(t) // and starts again on the same state directory and token

	after, err := r.slots.Store.Slots()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("state changed across restart:\nbefore %+v\nafter  %+v", before, after)
	}
	got, _ := r.slots.Show(r.hsmID + "/01")
	if got.State != store.Provisioned || !strings.Contains(got.Certificate, strings.TrimSpace(string(ca.EncodeCertificatePEM(root))[28:80])) {
		t.Fatalf("root slot after restart: %+v", got)
	}
	// And the slots still work: the pending CSR slot can be re-requested, the root signs.
	if _, err := r.slots.CSR(ctx, rec.ID, provisioningCert(t, "Pending", 0)); err != nil {
		t.Fatalf("csr after restart: %v", err)
	}
}

func TestClearKeepsKeyUnlessAsked(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	rec, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: "01", Mode: ModeGenerate, KeyType: hsm.P256})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.slots.Clear(ctx, rec.ID, false); err != nil {
		t.Fatal(err)
	}
	// The key is still on the token and can be taken over as "existing".
	again, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: "01", Mode: ModeExisting})
	if err != nil || again.CAID != rec.CAID {
		t.Fatalf("existing after clear: %+v %v", again, err)
	}
	if err := r.slots.Clear(ctx, rec.ID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := mustToken(t, r).PublicKey(ctx, "01"); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("destroy_key left the key: %v", err)
	}
}

// provisioningCert is the test PKI's provisioning certificate.
func provisioningCert(t *testing.T, cn string, pathLen int) []byte {
	return pkitest.ProvisioningCert(t, cn, pathLen)
}
