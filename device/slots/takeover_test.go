//go:build cgo

package slots

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/store"
)

// migrate starts the core again on the same token with an empty state directory,
// as an appliance rebuilt from its token.
func (r *rig) migrate(t *testing.T) {
	t.Helper()
	r.close()
	r.stateDir = t.TempDir()
	r.open(t)
}

func (r *rig) existing(t *testing.T, slot string) store.Slot {
	t.Helper()
	rec, err := r.slots.Provision(context.Background(), ProvisionArgs{HSM: r.hsmID, Slot: slot, Mode: ModeExisting})
	if err != nil {
		t.Fatalf("existing %s: %v", slot, err)
	}
	return rec
}

func TestExistingTakesOverCertificateAndChainFromToken(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	root, rootKey, rec, csr := issuingCSR(t, r)
	interm := signCSR(t, csr, root, rootKey, root.NotAfter.Add(-time.Hour))
	if _, err := r.slots.ImportCert(ctx, rec.ID, ca.EncodeCertificatePEM(interm), ca.EncodeCertificatePEM(root)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: "03", Mode: ModeGenerate, KeyType: hsm.P256}); err != nil {
		t.Fatal(err)
	}

	r.migrate(t)

	// The intermediate first: its root is not in the new state yet, only on the token.
	got := r.existing(t, "02")
	if got.State != store.Provisioned || !strings.Contains(got.Note, "taken over") {
		t.Fatalf("intermediate after migration: state %s, note %q", got.State, got.Note)
	}
	cert, err := ca.ParseCertificatePEM([]byte(got.Certificate))
	if err != nil || !cert.Equal(interm) {
		t.Fatalf("certificate taken over is not the intermediate: %v", err)
	}
	chain, err := ca.ParseCertificatesPEM([]byte(got.Chain))
	if err != nil || len(chain) != 1 || !chain[0].Equal(root) {
		t.Fatalf("chain not recovered from the token: %q %v", got.Chain, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(chain[0])
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Fatalf("Go does not verify the recovered chain: %v", err)
	}
	pkitest.OpenSSLVerify(t, cert, chain)

	if got := r.existing(t, "01"); got.State != store.Provisioned || got.Chain != "" ||
		got.Certificate != string(ca.EncodeCertificatePEM(root)) {
		t.Fatalf("root after migration: %+v", got)
	}
	// A key without a certificate on the token is taken over as before.
	if got := r.existing(t, "03"); got.State != store.KeyReady || got.Certificate != "" || got.Note != "" {
		t.Fatalf("key without certificate: %+v", got)
	}
	// The recovered slots sign: the intermediate's signer is the token key.
	if _, _, _, err := r.slots.Signer(ctx, r.hsmID+"/02", store.Provisioned); err != nil {
		t.Fatal(err)
	}
}

// An intermediate whose root lives elsewhere is provisioned with an empty chain and
// says so; importing the chain afterwards completes it.
func TestExistingWithoutIssuerOnTokenHasEmptyChain(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	root, rootKey := goRoot(t)
	rec, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: "05", Mode: ModeGenerate, KeyType: hsm.P384})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := r.slots.CSR(ctx, rec.ID, provisioningCert(t, "Issuing", 0))
	if err != nil {
		t.Fatal(err)
	}
	interm := signCSR(t, csr, root, rootKey, root.NotAfter.Add(-time.Hour))
	if _, err := r.slots.ImportCert(ctx, rec.ID, ca.EncodeCertificatePEM(interm), ca.EncodeCertificatePEM(root)); err != nil {
		t.Fatal(err)
	}

	r.migrate(t)

	got := r.existing(t, "05")
	if got.State != store.Provisioned || got.Chain != "" || !strings.Contains(got.Note, "chain is empty") {
		t.Fatalf("state %s chain %q note %q", got.State, got.Chain, got.Note)
	}
	if _, err := r.slots.ImportCert(ctx, got.ID, []byte(got.Certificate), ca.EncodeCertificatePEM(root)); err != nil {
		t.Fatalf("completing the chain: %v", err)
	}
}

// A certificate on the token that is no CA certificate for the key is not taken:
// the slot stays key_ready and the note says why.
func TestExistingRefusesNonCACertificateOnToken(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	rec, err := r.slots.Provision(ctx, ProvisionArgs{HSM: r.hsmID, Slot: "07", Mode: ModeGenerate, KeyType: hsm.P256})
	if err != nil {
		t.Fatal(err)
	}
	root, rootKey := goRoot(t)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "not a CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, mustPub(t, r, "07"), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	if err := hsm.StoreCertificate(ctx, mustToken(t, r), "07", leaf); err != nil {
		t.Fatal(err)
	}
	if err := r.slots.Clear(ctx, rec.ID, false); err != nil {
		t.Fatal(err)
	}
	got := r.existing(t, "07")
	if got.State != store.KeyReady || got.Certificate != "" || !strings.Contains(got.Note, "not taken over") {
		t.Fatalf("state %s note %q", got.State, got.Note)
	}
}

// goRoot is a root CA of the PKI outside the appliance.
func goRoot(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Outside Root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour * 365),
		BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}
