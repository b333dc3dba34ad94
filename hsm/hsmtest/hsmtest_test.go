package hsmtest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/pemkey"
)

func loggedIn(t *testing.T) *Token {
	t.Helper()
	tok := New(Config{})
	if err := tok.Login(context.Background(), tok.PIN()); err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestPINRetriesAndBlocking(t *testing.T) {
	ctx := context.Background()
	tok := New(Config{PIN: "2468", Retries: 3})
	if _, err := tok.Generate(ctx, "01", hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrPINRequired) {
		t.Fatalf("generate before a login: %v, want ErrPINRequired", err)
	}
	if err := tok.Login(ctx, "2468"); err != nil {
		t.Fatal(err)
	}
	err := tok.Login(ctx, "0000")
	if !errors.Is(err, hsm.ErrPINIncorrect) || hsm.PINRetries(err) != 2 {
		t.Fatalf("wrong PIN: %v, want PIN incorrect with 2 tries left", err)
	}
	if info := tok.Info(); !info.PIN.Set || info.PIN.Retries != 2 {
		t.Fatalf("after a refused PIN the accepted one is kept: %+v", info.PIN)
	}
	if err := tok.Login(ctx, "2468"); err != nil {
		t.Fatal(err)
	}
	if n, _ := tok.PINRetries(ctx); n != 3 {
		t.Fatalf("the right PIN resets the counter: %d tries left, want 3", n)
	}
	for range 2 {
		tok.Login(ctx, "0000")
	}
	if err := tok.Login(ctx, "0000"); !errors.Is(err, hsm.ErrPINBlocked) {
		t.Fatalf("third wrong PIN: %v, want blocked", err)
	}
	if err := tok.Login(ctx, "2468"); !errors.Is(err, hsm.ErrPINBlocked) {
		t.Fatalf("the right PIN on a blocked token: %v, want blocked", err)
	}
	if info := tok.Info(); info.PIN.Set || info.PIN.Retries != 0 {
		t.Fatalf("blocked token: %+v", info.PIN)
	}
	if err := tok.Login(ctx, ""); !errors.Is(err, hsm.ErrPINRequired) {
		t.Fatalf("empty PIN: %v", err)
	}
}

func TestKeysSignAndVerify(t *testing.T) {
	ctx := context.Background()
	tok := loggedIn(t)
	digest := sha256.Sum256([]byte("to be signed"))
	for i, kt := range []hsm.KeyType{hsm.P256, hsm.P384, hsm.RSA2048} {
		name := []string{"01", "02", "03"}[i]
		pub, err := tok.Generate(ctx, name, kt, hsm.KeyOptions{Label: "k" + name})
		if err != nil {
			t.Fatal(err)
		}
		s, err := tok.Signer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		switch k := pub.(type) {
		case *ecdsa.PublicKey:
			if !ecdsa.VerifyASN1(k, digest[:], sig) {
				t.Errorf("%s: signature does not verify", kt)
			}
		case *rsa.PublicKey:
			if err := rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], sig); err != nil {
				t.Errorf("%s: %v", kt, err)
			}
		}
	}
	if _, err := tok.Generate(ctx, "01", hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("generate over a key: %v, want ErrExists", err)
	}
	slots, err := tok.Slots(ctx)
	if err != nil || len(slots) != 3 || slots[1].Slot != "02" || slots[1].KeyType != hsm.P384 || slots[1].Label != "k02" {
		t.Fatalf("slots %+v %v", slots, err)
	}
	if _, err := tok.Generate(ctx, "a/b", hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrInvalidSlot) {
		t.Fatalf("slot with a slash: %v", err)
	}
	if _, err := tok.Generate(ctx, "04", "ed25519", hsm.KeyOptions{}); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("unsupported key type: %v", err)
	}
}

func TestImportKeepsItsOwnCopy(t *testing.T) {
	ctx := context.Background()
	tok := loggedIn(t)
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	pub, err := tok.Import(ctx, "0a", key, hsm.KeyOptions{})
	if err != nil || !key.PublicKey.Equal(pub) {
		t.Fatalf("import: %v", err)
	}
	pemkey.Wipe(key) // as the device does with its copy
	s, _ := tok.Signer(ctx, "0a")
	digest := sha256.Sum256([]byte("x"))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil || rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, digest[:], sig) != nil {
		t.Fatalf("signature after the caller wiped its key: %v", err)
	}
	small, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if _, err := tok.Import(ctx, "0b", small, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("P-224 import: %v", err)
	}
}

func TestCertificatesAndDelete(t *testing.T) {
	ctx := context.Background()
	tok := loggedIn(t)
	pub, _ := tok.Generate(ctx, "01", hsm.P256, hsm.KeyOptions{})
	s, _ := tok.Signer(ctx, "01")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hsmtest"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, s)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Fatalf("self-signed by the token's key: %v", err)
	}
	if _, err := tok.Certificate(ctx, "01"); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("certificate before one is stored: %v", err)
	}
	if err := tok.StoreCertificate(ctx, "01", cert); err != nil {
		t.Fatal(err)
	}
	if got, err := tok.Certificate(ctx, "01"); err != nil || !got.Equal(cert) {
		t.Fatalf("stored certificate: %v", err)
	}
	if err := tok.StoreCertificate(ctx, "02", cert); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("certificate for an empty slot: %v", err)
	}
	if err := tok.DeleteKey(ctx, "01"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("sign with a deleted key: %v", err)
	}
	if _, err := tok.Certificate(ctx, "01"); !errors.Is(err, hsm.ErrNotFound) || tok.Keys() != 0 {
		t.Fatalf("after delete: %v, %d keys", err, tok.Keys())
	}
}

func TestPresenceAndFaults(t *testing.T) {
	ctx := context.Background()
	tok := loggedIn(t)
	tok.Generate(ctx, "01", hsm.P256, hsm.KeyOptions{})
	s, _ := tok.Signer(ctx, "01")
	tok.SetPresent(false)
	if tok.Info().Present {
		t.Fatal("pulled token reports present")
	}
	if _, err := s.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); !errors.Is(err, hsm.ErrOffline) {
		t.Fatalf("sign on a pulled token: %v, want ErrOffline", err)
	}
	if _, err := tok.Slots(ctx); !errors.Is(err, hsm.ErrOffline) {
		t.Fatalf("slots of a pulled token: %v", err)
	}
	tok.SetPresent(true)
	if _, err := s.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); err != nil {
		t.Fatalf("sign after the re-plug: %v", err)
	}
	boom := errors.New("CKR_DEVICE_ERROR")
	tok.FailNext(OpSign, boom)
	if _, err := s.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); !errors.Is(err, boom) {
		t.Fatalf("injected fault: %v", err)
	}
	if _, err := s.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); err != nil {
		t.Fatalf("a fault is for one call: %v", err)
	}
	if n := tok.Calls(OpSign); n != 4 {
		t.Fatalf("%d sign calls counted, want 4", n)
	}
}

func TestCoreHasNoOptionalMethods(t *testing.T) {
	ctx := context.Background()
	tok := New(Config{ID: "kms-1", Kind: hsm.KindCloudKMS, NoPIN: true})
	c := tok.Core()
	if _, err := c.Generate(ctx, "root", hsm.P256, hsm.KeyOptions{}); err != nil {
		t.Fatalf("a token without a PIN generates: %v", err)
	}
	if err := hsm.Login(ctx, c, "1234"); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("login: %v, want ErrUnsupported", err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := hsm.Import(ctx, c, "imp", key, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("import: %v", err)
	}
	if err := hsm.DeleteKey(ctx, c, "root"); !errors.Is(err, hsm.ErrUnsupported) || tok.Keys() != 1 {
		t.Fatalf("delete: %v (%d keys left)", err, tok.Keys())
	}
	if _, err := hsm.Certificate(ctx, c, "root"); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("certificate: %v", err)
	}
	// Through the helpers the full token does what the core cannot.
	if err := hsm.DeleteKey(ctx, tok, "root"); err != nil || tok.Keys() != 0 {
		t.Fatalf("delete through the full token: %v", err)
	}
}

func TestProvider(t *testing.T) {
	ctx := context.Background()
	a, b := New(Config{Serial: "a"}), New(Config{Serial: "b"})
	p := NewProvider(a)
	p.Add(b)
	toks, err := p.Tokens(ctx)
	if err != nil || len(toks) != 2 || toks[1].Info().ID != "hsmtest-b" {
		t.Fatalf("tokens %v %v", toks, err)
	}
	p.Remove("hsmtest-a")
	boom := errors.New("module gone")
	p.FailNext(boom)
	if _, err := p.Tokens(ctx); !errors.Is(err, boom) {
		t.Fatalf("failing scan: %v", err)
	}
	toks, _ = p.Tokens(ctx)
	if len(toks) != 1 || toks[0].Info().ID != "hsmtest-b" || p.Scans() != 3 {
		t.Fatalf("after remove: %v, %d scans", toks, p.Scans())
	}
	p.Close()
	if !p.Closed() {
		t.Fatal("Close not recorded")
	}
}
