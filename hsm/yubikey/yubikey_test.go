package yubikey

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-piv/piv-go/v2/piv"

	"github.com/iot-hsm/iot-hsm/device/hotplug"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey/pcscdtest"
)

const (
	vpcd   = "localhost:35963"
	reader = "Virtual PCD 00 00"
	serial = 12345678
)

func TestMain(m *testing.M) { pcscdtest.Main(m) }

// plug puts a fresh virtual YubiKey 5 into the first vpcd reader and protects its
// management key with the PIN, as `ykman piv access change-management-key --protect`
// does: the appliance then needs only the PIN.
func plug(t *testing.T) (*vyubikey.Card, *pcscdtest.Plugged, *Provider) {
	return plugCard(t, true)
}

// plugCard is plug, with the factory management key left unprotected when protect
// is false.
func plugCard(t *testing.T, protect bool) (*vyubikey.Card, *pcscdtest.Plugged, *Provider) {
	t.Helper()
	card, err := vyubikey.New(vyubikey.Config{Serial: serial, StatePath: filepath.Join(t.TempDir(), "card.json")})
	if err != nil {
		t.Fatal(err)
	}
	pcscdtest.LockAllReaders(t) // the provider looks at every reader
	p := pcscdtest.PlugCard(t, card, vpcd)
	if protect {
		pcscdtest.ProtectManagementKey(t, reader)
	}
	roots := x509.NewCertPool()
	roots.AddCert(card.AttestationRoot())
	prov := NewProvider(ProviderOptions{AttestationRoots: roots, IdleRelease: 200 * time.Millisecond})
	t.Cleanup(func() { prov.Close() })
	return card, p, prov
}

func token(t *testing.T, prov *Provider) *Token {
	t.Helper()
	toks, err := prov.Tokens(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range toks {
		if tk.Info().ID == "yubikey-12345678" {
			return tk.(*Token)
		}
	}
	t.Fatalf("the virtual YubiKey is not listed: %d tokens", len(toks))
	return nil
}

func sign(t *testing.T, s crypto.Signer) {
	t.Helper()
	d := sha256.Sum256([]byte("tbs"))
	sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature from the card does not verify")
	}
}

func TestProvisionSignAndAttest(t *testing.T) {
	_, _, prov := plug(t)
	ctx := context.Background()
	tok := token(t, prov)
	info := tok.Info()
	if info.Kind != hsm.KindYubiKey || info.Serial != "12345678" || !info.Present || !strings.Contains(info.Model, "5.7") {
		t.Fatalf("info %+v", info)
	}
	if _, err := tok.Generate(ctx, "9a", hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrPINRequired) {
		t.Fatalf("without a PIN: %v, want ErrPINRequired", err)
	}
	if err := tok.Login(ctx, "123456"); err != nil {
		t.Fatal(err)
	}
	pub, err := tok.Generate(ctx, "9a", hsm.P256, hsm.KeyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Generate(ctx, "9a", hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("generate over a key: %v, want ErrExists", err)
	}
	chain, err := tok.Attest(ctx, "9a")
	if err != nil || len(chain) != 2 || !chain[0].PublicKey.(*ecdsa.PublicKey).Equal(pub) {
		t.Fatalf("attestation: %v", err)
	}
	s, err := tok.Signer(ctx, "9a")
	if err != nil {
		t.Fatal(err)
	}
	sign(t, s)

	// The certificate goes into the slot, where other tools see it.
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "iot-hsm yubikey test"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, s)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	if err := tok.StoreCertificate(ctx, "9a", cert); err != nil {
		t.Fatal(err)
	}
	if got, err := tok.Certificate(ctx, "9a"); err != nil || !got.Equal(cert) {
		t.Fatalf("certificate: %v", err)
	}
	slots, err := tok.Slots(ctx)
	if err != nil || len(slots) != 1 || slots[0].Slot != "9a" || slots[0].KeyType != hsm.P256 || !slots[0].HasCert {
		t.Fatalf("slots %+v %v", slots, err)
	}
	tok.Close() // release the card so another program can use it
	out, err := exec.Command("yubico-piv-tool", "-r", reader, "-a", "status").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "iot-hsm yubikey test") {
		t.Fatalf("yubico-piv-tool -a status does not show the certificate: %v\n%s", err, out)
	}

	// An imported key signs too, and has no attestation.
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := tok.Import(ctx, "82", key, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	s2, err := tok.Signer(ctx, "82")
	if err != nil {
		t.Fatal(err)
	}
	sign(t, s2)
	if _, err := tok.Attest(ctx, "82"); err == nil {
		t.Fatal("an imported key was attested")
	}
	for _, bad := range []string{"f9", "9b", "96", "81", "zz"} {
		if _, err := tok.Generate(ctx, bad, hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrInvalidSlot) {
			t.Errorf("slot %s: %v, want ErrInvalidSlot", bad, err)
		}
	}
}

func TestWrongPINIsNotRetriedAndBlocks(t *testing.T) {
	_, _, prov := plug(t)
	ctx := context.Background()
	tok := token(t, prov)
	err := tok.Login(ctx, "000000")
	if !errors.Is(err, hsm.ErrPINIncorrect) || hsm.PINRetries(err) != 2 {
		t.Fatalf("wrong PIN: %v (retries %d), want incorrect with 2 left", err, hsm.PINRetries(err))
	}
	// Nothing tries the PIN again behind the operator's back.
	if _, err := tok.Slots(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Generate(ctx, "9c", hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrPINRequired) {
		t.Fatalf("after a wrong PIN: %v, want ErrPINRequired", err)
	}
	if r := tok.Info().PIN.Retries; r != 2 {
		t.Fatalf("retries %d after one wrong PIN and no retry, want 2", r)
	}
	tok.Login(ctx, "000001")
	err = tok.Login(ctx, "000002")
	if !errors.Is(err, hsm.ErrPINBlocked) {
		t.Fatalf("third wrong PIN: %v, want ErrPINBlocked", err)
	}
	if err := tok.Login(ctx, "123456"); !errors.Is(err, hsm.ErrPINBlocked) {
		t.Fatalf("right PIN on a blocked card: %v, want ErrPINBlocked", err)
	}
}

// A management key given with the PIN (hsm.set_pin) is checked by the card before it
// is kept: a wrong one is refused and changes nothing, a wrong PIN costs one try, and
// the right one serves key generation on a card whose key is not PIN-protected.
func TestSetManagementKey(t *testing.T) {
	_, _, prov := plugCard(t, false)
	ctx := context.Background()
	tok := token(t, prov)
	if err := tok.Login(ctx, piv.DefaultPIN); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Generate(ctx, "9c", hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrPINRequired) {
		t.Fatalf("no management key known: %v, want ErrPINRequired", err)
	}
	wrong := make([]byte, 24)
	rand.Read(wrong)
	if err := tok.SetManagementKey(ctx, piv.DefaultPIN, wrong); !errors.Is(err, hsm.ErrManagementKey) {
		t.Fatalf("wrong management key: %v, want ErrManagementKey", err)
	}
	if _, err := tok.Generate(ctx, "9c", hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrPINRequired) {
		t.Fatalf("after a refused management key: %v, want still ErrPINRequired (nothing kept)", err)
	}
	if err := tok.SetManagementKey(ctx, "000000", piv.DefaultManagementKey); !errors.Is(err, hsm.ErrPINIncorrect) || hsm.PINRetries(err) != 2 {
		t.Fatalf("wrong PIN with the key: %v (retries %d), want incorrect with 2 left", err, hsm.PINRetries(err))
	}
	if err := tok.SetManagementKey(ctx, piv.DefaultPIN, piv.DefaultManagementKey); err != nil {
		t.Fatalf("right PIN and key: %v", err)
	}
	if err := tok.Login(ctx, piv.DefaultPIN); err != nil {
		t.Fatal(err)
	}
	// The card's counter is back at its maximum; the status must not keep the 2
	// left from the wrong PIN (PIV does not tell the maximum: unknown is honest).
	if r := tok.Info().PIN.Retries; r != -1 && r != 3 {
		t.Errorf("retries %d after the right PIN, want 3 or unknown", r)
	}
	pub, err := tok.Generate(ctx, "9c", hsm.P256, hsm.KeyOptions{})
	if err != nil {
		t.Fatalf("generate with the management key given: %v", err)
	}
	s, err := tok.Signer(ctx, "9c")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("the signer's key is not the generated one")
	}
	sign(t, s)

	// A refused new PIN leaves the working PIN and the management key that came
	// with it in use: one mistyped hsm.set_pin does not take the CA offline.
	if err := tok.Login(ctx, "000000"); !errors.Is(err, hsm.ErrPINIncorrect) || hsm.PINRetries(err) != 2 {
		t.Fatalf("wrong PIN: %v", err)
	}
	if !tok.Info().PIN.Set {
		t.Fatal("the working PIN was dropped by a refused one")
	}
	if _, err := tok.Generate(ctx, "9d", hsm.P256, hsm.KeyOptions{}); err != nil {
		t.Fatalf("after a refused new PIN: %v, want the working credentials still in use", err)
	}
	// The appliance does not present the working PIN again to reset the counter:
	// that would give whoever sends wrong PINs unlimited guesses.
	if n, err := tok.PINRetries(ctx); err != nil || n != 2 {
		t.Fatalf("PIN counter after a refused PIN: %d, %v, want 2", n, err)
	}
}

func TestUnplugAndReplug(t *testing.T) {
	_, plugged, prov := plug(t)
	ctx := context.Background()
	tok := token(t, prov)
	if err := tok.Login(ctx, "123456"); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Generate(ctx, "9d", hsm.P256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer(ctx, "9d")
	if err != nil {
		t.Fatal(err)
	}
	sign(t, s)

	plugged.Unplug(t)
	d := sha256.Sum256([]byte("x"))
	if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, hsm.ErrOffline) {
		t.Fatalf("sign on an unplugged card: %v, want ErrOffline", err)
	}
	prov.Tokens(ctx)
	if tok.Info().Present {
		t.Fatal("unplugged card still present")
	}

	plugged.Replug(t)
	prov.Tokens(ctx)
	if !tok.Info().Present {
		t.Fatal("replugged card not present")
	}
	sign(t, s) // same signer, same PIN, no restart
}

func TestKeyTypesByFirmware(t *testing.T) {
	if _, err := algorithm(hsm.RSA4096, piv.Version{Major: 5, Minor: 4, Patch: 3}); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("RSA-4096 on 5.4.3: %v", err)
	}
	if a, err := algorithm(hsm.RSA4096, piv.Version{Major: 5, Minor: 7, Patch: 1}); err != nil || a != piv.AlgorithmRSA4096 {
		t.Fatalf("RSA-4096 on 5.7.1: %v", err)
	}
	if len(SlotNames) != 24 {
		t.Fatalf("%d slots offered, want 9a 9c 9d 9e and 82..95", len(SlotNames))
	}
}

// pulled pulls the card as a hand does, without waiting for pcscd: pcscd polls the
// reader, so for a moment it still shows the card, and whatever opens it then opens
// a card that is gone.
func pulled(t *testing.T, p *pcscdtest.Plugged) {
	t.Helper()
	p.Card.Unplug()
	if st, err := pcscdtest.State(p.Reader); err != nil || !st.Present {
		t.Logf("pcscd already saw the card go (%+v, %v): the pull is not mid-open", st, err)
	}
}

// readerFree waits until pcscd sees the reader empty and nothing in this process
// holds it any more: another program, or the card plugged back, must get it.
func readerFree(t *testing.T, p *pcscdtest.Plugged) {
	t.Helper()
	p.Unplug(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := pcscdtest.State(p.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Exclusive {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reader is still held exclusively after the card was pulled mid-open: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A YubiKey pulled while the appliance opens it, in a scan or for an operation,
// leaves its reader free, and the card plugged back is found and signs.
func TestCardPulledWhileOpeningLeavesReaderFree(t *testing.T) {
	_, plugged, _ := plug(t)
	ctx := context.Background()
	prov := NewProvider(ProviderOptions{CardState: hotplug.CardState, IdleRelease: 100 * time.Millisecond})
	t.Cleanup(func() { prov.Close() })
	tok := token(t, prov)
	if err := tok.Login(ctx, "123456"); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Generate(ctx, "9a", hsm.P256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer(ctx, "9a")
	if err != nil {
		t.Fatal(err)
	}

	// Pulled while a scan opens it.
	time.Sleep(300 * time.Millisecond) // idle release: the scan must open the card
	pulled(t, plugged)
	prov.Tokens(ctx)
	readerFree(t, plugged)
	plugged.Replug(t)
	if tok = token(t, prov); !tok.Info().Present {
		t.Fatal("the card plugged back is not present")
	}
	sign(t, s)

	// Pulled while a signature opens it.
	time.Sleep(300 * time.Millisecond)
	pulled(t, plugged)
	d := sha256.Sum256([]byte("pulled"))
	if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, hsm.ErrOffline) {
		t.Fatalf("sign on a pulled card: %v, want ErrOffline", err)
	}
	readerFree(t, plugged)
	plugged.Replug(t)
	token(t, prov)
	sign(t, s)
}
