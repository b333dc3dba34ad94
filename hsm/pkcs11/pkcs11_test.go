package pkcs11

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
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
)

// open makes a fresh SoftHSM2 token and returns it logged in.
func open(t *testing.T) (*softhsm.Token, *Module, *Token) {
	t.Helper()
	st := softhsmtest.New(t, "test-ca")
	m, err := Open(st.Module)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ctx := context.Background()
	tok, err := m.Token(ctx, st.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Login(ctx, st.PIN); err != nil {
		t.Fatal(err)
	}
	return st, m, tok
}

func digestFor(kt hsm.KeyType, msg []byte) (crypto.Hash, []byte) {
	h := crypto.SHA256
	if kt == hsm.P384 {
		h = crypto.SHA384
	}
	d := h.New()
	d.Write(msg)
	return h, d.Sum(nil)
}

func verify(t *testing.T, pub crypto.PublicKey, h crypto.Hash, digest, sig []byte, opts crypto.SignerOpts) {
	t.Helper()
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			t.Fatal("ECDSA signature from the token does not verify")
		}
	case *rsa.PublicKey:
		var err error
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			err = rsa.VerifyPSS(k, h, digest, sig, pss)
		} else {
			err = rsa.VerifyPKCS1v15(k, h, digest, sig)
		}
		if err != nil {
			t.Fatalf("RSA signature from the token does not verify: %v", err)
		}
	default:
		t.Fatalf("unexpected public key %T", pub)
	}
}

func TestGenerateAndSignEveryKeyType(t *testing.T) {
	_, _, tok := open(t)
	ctx := context.Background()
	for i, kt := range hsm.KeyTypes {
		slot := []string{"01", "02", "03", "a1", "a2"}[i]
		t.Run(string(kt), func(t *testing.T) {
			pub, err := tok.Generate(ctx, slot, kt, hsm.KeyOptions{Label: "ca " + string(kt)})
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := hsm.KeyTypeOf(pub); got != kt {
				t.Fatalf("generated key type %s, want %s", got, kt)
			}
			s, err := tok.Signer(ctx, slot)
			if err != nil {
				t.Fatal(err)
			}
			h, digest := digestFor(kt, []byte("to be signed"))
			sig, err := s.Sign(rand.Reader, digest, h)
			if err != nil {
				t.Fatal(err)
			}
			verify(t, pub, h, digest, sig, h)
			if kt.IsRSA() {
				pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}
				sig, err := s.Sign(rand.Reader, digest, pss)
				if err != nil {
					t.Fatal(err)
				}
				verify(t, pub, h, digest, sig, pss)
			}
		})
	}
	slots, err := tok.Slots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(slots) != len(hsm.KeyTypes) {
		t.Fatalf("Slots() lists %d keys, want %d: %+v", len(slots), len(hsm.KeyTypes), slots)
	}
}

// privateAttrs reads attributes of the slot's private key through PKCS#11 directly.
func privateAttrs(t *testing.T, tok *Token, slot string, types ...uint) ([]*pkcs11.Attribute, error) {
	t.Helper()
	var out []*pkcs11.Attribute
	err := tok.do(context.Background(), func(s pkcs11.SessionHandle) error {
		h, err := tok.privateKey(s, slot)
		if err != nil {
			return err
		}
		var tmpl []*pkcs11.Attribute
		for _, ty := range types {
			tmpl = append(tmpl, pkcs11.NewAttribute(ty, nil))
		}
		out, err = tok.m.ctx.GetAttributeValue(s, h, tmpl)
		return err
	})
	return out, err
}

func assertNotExtractable(t *testing.T, tok *Token, slot string, generated bool) {
	t.Helper()
	a, err := privateAttrs(t, tok, slot, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE,
		pkcs11.CKA_SIGN, pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_NEVER_EXTRACTABLE, pkcs11.CKA_ALWAYS_SENSITIVE)
	if err != nil {
		t.Fatal(err)
	}
	want := []bool{true, false, true, true, true, false, false, true, true}
	if !generated {
		want = want[:7] // an imported key was, by definition, once outside the token
	}
	names := []string{"SENSITIVE", "EXTRACTABLE", "TOKEN", "PRIVATE", "SIGN", "DECRYPT", "UNWRAP", "NEVER_EXTRACTABLE", "ALWAYS_SENSITIVE"}
	for i, w := range want {
		if got := len(a[i].Value) == 1 && a[i].Value[0] == 1; got != w {
			t.Errorf("CKA_%s = %v, want %v", names[i], got, w)
		}
	}
	for _, secret := range []uint{pkcs11.CKA_VALUE, pkcs11.CKA_PRIVATE_EXPONENT, pkcs11.CKA_PRIME_1} {
		_, err := privateAttrs(t, tok, slot, secret)
		if !errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE)) && !errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID)) {
			t.Errorf("reading secret attribute 0x%x: %v, want CKR_ATTRIBUTE_SENSITIVE", secret, err)
		}
	}
}

func TestGeneratedKeyIsNotExtractable(t *testing.T) {
	_, _, tok := open(t)
	for _, kt := range []hsm.KeyType{hsm.P256, hsm.RSA2048} {
		slot := map[hsm.KeyType]string{hsm.P256: "10", hsm.RSA2048: "11"}[kt]
		if _, err := tok.Generate(context.Background(), slot, kt, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
		assertNotExtractable(t, tok, slot, true)
	}
}

func TestImportedKeySignsAndIsNotExtractable(t *testing.T) {
	_, _, tok := open(t)
	ctx := context.Background()
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for slot, key := range map[string]crypto.Signer{"21": rk, "22": ek} {
		want := key.Public()
		pub, err := tok.Import(ctx, slot, key, hsm.KeyOptions{Label: "imported"})
		if err != nil {
			t.Fatal(err)
		}
		onToken, err := tok.PublicKey(ctx, slot)
		if err != nil {
			t.Fatal(err)
		}
		if !onToken.(interface{ Equal(crypto.PublicKey) bool }).Equal(want) || !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(want) {
			t.Fatal("public key on the token differs from the imported key")
		}
		s, err := tok.Signer(ctx, slot)
		if err != nil {
			t.Fatal(err)
		}
		kt, _ := hsm.KeyTypeOf(want)
		h, digest := digestFor(kt, []byte("imported"))
		sig, err := s.Sign(rand.Reader, digest, h)
		if err != nil {
			t.Fatal(err)
		}
		verify(t, want, h, digest, sig, h)
		assertNotExtractable(t, tok, slot, false)
	}
}

func TestOccupiedSlotNeedsOverwrite(t *testing.T) {
	_, _, tok := open(t)
	ctx := context.Background()
	first, err := tok.Generate(ctx, "05", hsm.P256, hsm.KeyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = tok.Generate(ctx, "5", hsm.P256, hsm.KeyOptions{}) // same slot, short spelling
	if !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("second generate: %v, want ErrExists", err)
	}
	still, err := tok.PublicKey(ctx, "05")
	if err != nil || !still.(*ecdsa.PublicKey).Equal(first) {
		t.Fatalf("key changed after a refused generate: %v", err)
	}
	second, err := tok.Generate(ctx, "05", hsm.P256, hsm.KeyOptions{Overwrite: true})
	if err != nil {
		t.Fatal(err)
	}
	if second.(*ecdsa.PublicKey).Equal(first) {
		t.Fatal("overwrite kept the old key")
	}
	if slots, _ := tok.Slots(ctx); len(slots) != 1 {
		t.Fatalf("after overwrite %d keys on the token, want 1", len(slots))
	}
}

func TestBadSlotNamesAndMissingKeys(t *testing.T) {
	_, _, tok := open(t)
	ctx := context.Background()
	for _, bad := range []string{"", "xyz", strings.Repeat("a", 33), "01/02"} {
		if _, err := tok.Generate(ctx, bad, hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrInvalidSlot) {
			t.Errorf("slot %q: %v, want ErrInvalidSlot", bad, err)
		}
	}
	if _, err := tok.Signer(ctx, "7f"); !errors.Is(err, hsm.ErrNotFound) {
		t.Errorf("empty slot: %v, want ErrNotFound", err)
	}
	if _, err := tok.Certificate(ctx, "7f"); !errors.Is(err, hsm.ErrNotFound) {
		t.Errorf("no certificate: %v, want ErrNotFound", err)
	}
}

func selfSigned(t *testing.T, s crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "pkcs11 test"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertificateIsPairedWithKey(t *testing.T) {
	st, _, tok := open(t)
	ctx := context.Background()
	if _, err := tok.Generate(ctx, "0a", hsm.P256, hsm.KeyOptions{Label: "root"}); err != nil {
		t.Fatal(err)
	}
	s, _ := tok.Signer(ctx, "0a")
	cert := selfSigned(t, s)
	if err := tok.StoreCertificate(ctx, "0a", cert); err != nil {
		t.Fatal(err)
	}
	// Replacing keeps exactly one certificate.
	cert2 := selfSigned(t, s)
	if err := tok.StoreCertificate(ctx, "0a", cert2); err != nil {
		t.Fatal(err)
	}
	got, err := tok.Certificate(ctx, "0a")
	if err != nil || !got.Equal(cert2) {
		t.Fatalf("certificate read back differs: %v", err)
	}

	out, err := st.Tool("--list-objects", "--login", "--pin", st.PIN, "--token-label", st.Label)
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	ids := map[string][]string{}
	for _, obj := range regexp.MustCompile(`(?m)^(\w[\w ]*) Object;`).Split(out, -1)[1:] {
		if m := regexp.MustCompile(`ID:\s+(\S+)`).FindStringSubmatch(obj); m != nil {
			ids[m[1]] = append(ids[m[1]], obj)
		}
	}
	kinds := regexp.MustCompile(`(?m)^(Private Key|Public Key|Certificate) Object`).FindAllString(out, -1)
	if len(kinds) != 3 || len(ids["0a"]) != 3 {
		t.Fatalf("pkcs11-tool should list private key, public key and one certificate with ID 0a:\n%s", out)
	}
	if !strings.Contains(out, "label:      root") {
		t.Errorf("certificate does not carry the key's label:\n%s", out)
	}
}

func TestWrongPINIsReportedAndNotKept(t *testing.T) {
	st := softhsmtest.New(t, "pin-test")
	m, err := Open(st.Module)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	tok, err := m.Token(ctx, st.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Slots(ctx); !errors.Is(err, hsm.ErrPINRequired) {
		t.Fatalf("without PIN: %v, want ErrPINRequired", err)
	}
	err = tok.Login(ctx, "0000")
	if !errors.Is(err, hsm.ErrPINIncorrect) {
		t.Fatalf("wrong PIN: %v, want ErrPINIncorrect", err)
	}
	if strings.Contains(err.Error(), "0000") {
		t.Fatal("the error message contains the PIN")
	}
	if tok.Info().PIN.Set {
		t.Fatal("a rejected PIN is marked as set")
	}
	if _, err := tok.Slots(ctx); !errors.Is(err, hsm.ErrPINRequired) {
		t.Fatalf("after a wrong PIN: %v, want ErrPINRequired (no retry with the bad PIN)", err)
	}
	if err := tok.Login(ctx, st.PIN); err != nil {
		t.Fatal(err)
	}
	if !tok.Info().PIN.Set {
		t.Fatal("an accepted PIN is not marked as set")
	}
}

func TestTokenRemovedAndReturned(t *testing.T) {
	st, _, tok := open(t)
	ctx := context.Background()
	pub, err := tok.Generate(ctx, "01", hsm.P256, hsm.KeyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer(ctx, "01")
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("x"))
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}

	// Pulling a SoftHSM2 token is taking its directory away.
	tokens := st.Dir + "/tokens"
	if err := os.Rename(tokens, tokens+".away"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reinitGap) // let the module re-initialise on the next failure
	_, err = s.Sign(nil, digest[:], crypto.SHA256)
	if !errors.Is(err, hsm.ErrOffline) {
		t.Fatalf("sign on a removed token: %v, want ErrOffline", err)
	}
	if tok.Info().Present {
		t.Fatal("removed token still reported present")
	}

	if err := os.Rename(tokens+".away", tokens); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reinitGap)
	sig, err := s.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("sign after the token came back: %v", err)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatal("signature after re-plug does not verify")
	}
	if !tok.Info().Present {
		t.Fatal("returned token not reported present")
	}
}

func TestParseURI(t *testing.T) {
	u, err := ParseURI("pkcs11:token=My%20CA;serial=3f2a;id=%01%a1;object=root?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234")
	if err != nil {
		t.Fatal(err)
	}
	if u.Token != "My CA" || u.Serial != "3f2a" || string(u.ID) != "\x01\xa1" || u.Object != "root" ||
		u.ModulePath != "/usr/lib/softhsm/libsofthsm2.so" || u.PINValue != "1234" {
		t.Fatalf("parsed %+v", u)
	}
	if strings.Contains(u.String(), "1234") {
		t.Fatal("String() leaks the PIN")
	}
	if !u.Matches("My CA", "3f2a", "any", "any") || u.Matches("Other", "3f2a", "", "") {
		t.Fatal("Matches is wrong")
	}
	for _, bad := range []string{"token=x", "pkcs11:tokn=x", "pkcs11:token"} {
		if _, err := ParseURI(bad); !errors.Is(err, hsm.ErrInvalidConfig) {
			t.Errorf("%q: %v, want ErrInvalidConfig", bad, err)
		}
	}
}
