package vyubikey_test

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/go-piv/piv-go/v2/piv"

	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
)

var defaultKey = piv.DefaultManagementKey // 0102..08, as AES-192 on 5.7

func TestPIVGoIdentityAndPIN(t *testing.T) {
	p := plugNew(t, vyubikey.Config{Serial: 31337007})
	readers, err := piv.Cards()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(readers, p.Reader) {
		t.Fatalf("piv.Cards() = %q, no %q", readers, p.Reader)
	}
	yk := open(t, p)
	if s, err := yk.Serial(); err != nil || s != 31337007 {
		t.Fatalf("Serial() = %d, %v", s, err)
	}
	if v := yk.Version(); v != (piv.Version{Major: 5, Minor: 7, Patch: 1}) {
		t.Fatalf("Version() = %+v", v)
	}
	if ff, err := yk.FormFactor(); err != nil || ff != piv.FormfactorUSBAKeychain {
		t.Fatalf("FormFactor() = %v, %v", ff, err)
	}
	if n, err := yk.Retries(); err != nil || n != 3 {
		t.Fatalf("Retries() = %d, %v", n, err)
	}
	err = yk.VerifyPIN("999999")
	var ae piv.AuthErr
	if !errors.As(err, &ae) || ae.Retries != 2 {
		t.Fatalf("wrong PIN: %v", err)
	}
	if n, err := yk.Retries(); err != nil || n != 2 {
		t.Fatalf("Retries() = %d, %v", n, err)
	}
	if err := yk.VerifyPIN(piv.DefaultPIN); err != nil {
		t.Fatalf("right PIN: %v", err)
	}
	if n, err := yk.Retries(); err == nil {
		// Verified: the status query answers 9000, which piv-go reports as an error.
		t.Fatalf("Retries() after verification = %d, nil", n)
	}
	if err := yk.SetPIN(piv.DefaultPIN, "24681357"); err != nil {
		t.Fatal(err)
	}
	if err := yk.VerifyPIN("24681357"); err != nil {
		t.Fatal(err)
	}
	if err := yk.SetPUK(piv.DefaultPUK, "11223344"); err != nil {
		t.Fatal(err)
	}
}

func TestPIVGoBlockAndUnblock(t *testing.T) {
	p := plugNew(t, vyubikey.Config{})
	yk := open(t, p)
	for want := 2; want >= 0; want-- {
		var ae piv.AuthErr
		if err := yk.VerifyPIN("000000"); !errors.As(err, &ae) || ae.Retries != want {
			t.Fatalf("wrong PIN: %v, want %d retries", err, want)
		}
	}
	// Blocked: the right PIN fails too (6983, AuthErr with 0 retries).
	err := yk.VerifyPIN(piv.DefaultPIN)
	var ae piv.AuthErr
	if !errors.As(err, &ae) || ae.Retries != 0 {
		t.Fatalf("blocked PIN: %v", err)
	}
	if n, err := yk.Retries(); err != nil || n != 0 {
		t.Fatalf("Retries() = %d, %v", n, err)
	}
	// A wrong PUK costs a PUK try.
	if err := yk.Unblock("87654321", "135790"); !errors.As(err, &ae) || ae.Retries != 2 {
		t.Fatalf("wrong PUK: %v", err)
	}
	if err := yk.Unblock(piv.DefaultPUK, "135790"); err != nil {
		t.Fatal(err)
	}
	if err := yk.VerifyPIN("135790"); err != nil {
		t.Fatal(err)
	}
}

// selfSigned makes a certificate for pub signed by signer.
func selfSigned(t testing.TB, cn string, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// checkSign signs with the card's key and verifies with Go.
func checkSign(t *testing.T, priv crypto.PrivateKey, pub crypto.PublicKey) {
	t.Helper()
	msg := []byte("signed on a virtual YubiKey")
	switch pk := pub.(type) {
	case *ecdsa.PublicKey:
		signer := priv.(crypto.Signer)
		var digest []byte
		var h crypto.Hash
		if pk.Curve == elliptic.P384() {
			d := sha512.Sum384(msg)
			digest, h = d[:], crypto.SHA384
		} else {
			d := sha256.Sum256(msg)
			digest, h = d[:], crypto.SHA256
		}
		sig, err := signer.Sign(rand.Reader, digest, h)
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		if !ecdsa.VerifyASN1(pk, digest, sig) {
			t.Fatal("ECDSA signature does not verify")
		}
	case *rsa.PublicKey:
		signer := priv.(crypto.Signer)
		d := sha256.Sum256(msg)
		sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		if err := rsa.VerifyPKCS1v15(pk, crypto.SHA256, d[:], sig); err != nil {
			t.Fatal(err)
		}
		opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		sig, err = signer.Sign(rand.Reader, d[:], opts)
		if err != nil {
			t.Fatalf("PSS sign: %v", err)
		}
		if err := rsa.VerifyPSS(pk, crypto.SHA256, d[:], sig, opts); err != nil {
			t.Fatal(err)
		}
		// Decryption is the same raw operation.
		ct := encryptPKCS1v15(pk, []byte("secret"))
		pt, err := priv.(crypto.Decrypter).Decrypt(rand.Reader, ct, nil)
		if err != nil || string(pt) != "secret" {
			t.Fatalf("decrypt: %q, %v", pt, err)
		}
	case ed25519.PublicKey:
		sig, err := priv.(crypto.Signer).Sign(rand.Reader, msg, crypto.Hash(0))
		if err != nil {
			t.Fatal(err)
		}
		if !ed25519.Verify(pk, msg, sig) {
			t.Fatal("Ed25519 signature does not verify")
		}
	case *ecdh.PublicKey:
		peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
		s1, err := priv.(*piv.X25519PrivateKey).ECDH(peer.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		s2, _ := peer.ECDH(pk)
		if !bytes.Equal(s1, s2) {
			t.Fatal("X25519 secrets differ")
		}
	default:
		t.Fatalf("public key %T", pub)
	}
}

func TestPIVGoGenerateSignAttest(t *testing.T) {
	p := plugNew(t, vyubikey.Config{Serial: 5550001, FormFactor: vyubikey.FormFactorUSBCNano})
	yk := open(t, p)
	retired82, _ := piv.RetiredKeyManagementSlot(0x82)
	retired95, _ := piv.RetiredKeyManagementSlot(0x95)
	retired90, _ := piv.RetiredKeyManagementSlot(0x90)
	retired91, _ := piv.RetiredKeyManagementSlot(0x91)
	roots := rootPool(p.Card)
	attestCert, err := yk.AttestationCertificate()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		slot piv.Slot
		key  piv.Key
	}{
		{"P256", piv.SlotAuthentication, piv.Key{Algorithm: piv.AlgorithmEC256, PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyNever}},
		{"P384", piv.SlotSignature, piv.Key{Algorithm: piv.AlgorithmEC384, PINPolicy: piv.PINPolicyAlways, TouchPolicy: piv.TouchPolicyNever}},
		{"RSA2048", piv.SlotKeyManagement, piv.Key{Algorithm: piv.AlgorithmRSA2048, PINPolicy: piv.PINPolicyNever, TouchPolicy: piv.TouchPolicyNever}},
		{"RSA3072", retired82, piv.Key{Algorithm: piv.AlgorithmRSA3072, PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyCached}},
		{"RSA4096", retired95, piv.Key{Algorithm: piv.AlgorithmRSA4096, PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyNever}},
		{"Ed25519", retired90, piv.Key{Algorithm: piv.AlgorithmEd25519, PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyNever}},
		{"X25519", retired91, piv.Key{Algorithm: piv.AlgorithmX25519, PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyNever}},
		{"P256-card-auth", piv.SlotCardAuthentication, piv.Key{Algorithm: piv.AlgorithmEC256, PINPolicy: piv.PINPolicyNever, TouchPolicy: piv.TouchPolicyAlways}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub, err := yk.GenerateKey(defaultKey, tc.slot, tc.key)
			if err != nil {
				t.Fatalf("GenerateKey: %v", err)
			}
			info, err := yk.KeyInfo(tc.slot)
			if err != nil {
				t.Fatalf("KeyInfo: %v", err)
			}
			if info.Algorithm != tc.key.Algorithm || info.PINPolicy != tc.key.PINPolicy ||
				info.TouchPolicy != tc.key.TouchPolicy || info.Origin != piv.OriginGenerated {
				t.Fatalf("KeyInfo = %+v", info)
			}
			if !info.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Fatal("KeyInfo public key differs")
			}
			priv, err := yk.PrivateKey(tc.slot, pub, piv.KeyAuth{PIN: piv.DefaultPIN})
			if err != nil {
				t.Fatal(err)
			}
			checkSign(t, priv, pub)
			if tc.key.PINPolicy == piv.PINPolicyAlways {
				checkSign(t, priv, pub) // a fresh VERIFY each time
			}

			slotCert, err := yk.Attest(tc.slot)
			if err != nil {
				t.Fatalf("Attest: %v", err)
			}
			// crypto/x509 leaves PublicKey nil for X25519; parse the SPKI.
			attested, err := x509.ParsePKIXPublicKey(slotCert.RawSubjectPublicKeyInfo)
			if err != nil {
				t.Fatal(err)
			}
			if !attested.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Fatal("attested public key differs")
			}
			a, err := (&piv.Verifier{Roots: roots}).Verify(attestCert, slotCert)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := piv.Attestation{Version: piv.Version{Major: 5, Minor: 7, Patch: 1}, Serial: 5550001,
				Formfactor: piv.FormfactorUSBCNano, PINPolicy: tc.key.PINPolicy, TouchPolicy: tc.key.TouchPolicy, Slot: tc.slot}
			if *a != want {
				t.Fatalf("attestation %+v, want %+v", *a, want)
			}
		})
	}
	// piv-go's package-level Verify trusts only Yubico's real roots.
	slotCert, err := yk.Attest(piv.SlotAuthentication)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := piv.Verify(attestCert, slotCert); err == nil {
		t.Fatal("piv.Verify accepted a virtual card's attestation against Yubico's roots")
	}
	// No key: ErrNotFound.
	retired83, _ := piv.RetiredKeyManagementSlot(0x83)
	if _, err := yk.Attest(retired83); !errors.Is(err, piv.ErrNotFound) {
		t.Fatalf("Attest(empty) = %v", err)
	}
	if _, err := yk.KeyInfo(retired83); !errors.Is(err, piv.ErrNotFound) {
		t.Fatalf("KeyInfo(empty) = %v", err)
	}
	// Wrong management key.
	if _, err := yk.GenerateKey(bytes.Repeat([]byte{9}, 24), retired83,
		piv.Key{Algorithm: piv.AlgorithmEC256, PINPolicy: piv.PINPolicyNever, TouchPolicy: piv.TouchPolicyNever}); err == nil {
		t.Fatal("GenerateKey with a wrong management key succeeded")
	}
}

func TestPIVGoFirmwareGates(t *testing.T) {
	p := plugNew(t, vyubikey.Config{Version: [3]byte{5, 4, 3}})
	yk := open(t, p)
	// 5.4: 3DES default management key; no RSA-3072/4096.
	if _, err := yk.GenerateKey(defaultKey, piv.SlotAuthentication,
		piv.Key{Algorithm: piv.AlgorithmRSA3072, PINPolicy: piv.PINPolicyNever, TouchPolicy: piv.TouchPolicyNever}); err == nil {
		t.Fatal("RSA-3072 on 5.4.3")
	}
	pub, err := yk.GenerateKey(defaultKey, piv.SlotAuthentication,
		piv.Key{Algorithm: piv.AlgorithmEC256, PINPolicy: piv.PINPolicyNever, TouchPolicy: piv.TouchPolicyNever})
	if err != nil {
		t.Fatal(err)
	}
	priv, err := yk.PrivateKey(piv.SlotAuthentication, pub, piv.KeyAuth{})
	if err != nil {
		t.Fatal(err)
	}
	checkSign(t, priv, pub)
}

func TestPIVGoCertificates(t *testing.T) {
	p := plugNew(t, vyubikey.Config{})
	yk := open(t, p)
	retired, _ := piv.RetiredKeyManagementSlot(0x8c)
	if _, err := yk.Certificate(piv.SlotAuthentication); !errors.Is(err, piv.ErrNotFound) {
		t.Fatalf("Certificate(empty) = %v", err)
	}
	// A large certificate (RSA-4096 key, RSA-4096 signature) needs command and
	// response chaining.
	big4096, err := rsa.GenerateKey(rand.Reader, 4096)
	if err != nil {
		t.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, tc := range []struct {
		slot piv.Slot
		cert *x509.Certificate
	}{
		{piv.SlotAuthentication, selfSigned(t, "small", &ec.PublicKey, ec)},
		{retired, selfSigned(t, "large", &big4096.PublicKey, big4096)},
		{piv.SlotCardAuthentication, selfSigned(t, "ca", &ec.PublicKey, ec)},
	} {
		if err := yk.SetCertificate(defaultKey, tc.slot, tc.cert); err != nil {
			t.Fatalf("SetCertificate(%v): %v", tc.slot, err)
		}
		got, err := yk.Certificate(tc.slot)
		if err != nil {
			t.Fatalf("Certificate(%v): %v", tc.slot, err)
		}
		if !got.Equal(tc.cert) {
			t.Fatalf("slot %v: certificate differs", tc.slot)
		}
	}
	if err := yk.SetCertificate(bytes.Repeat([]byte{3}, 24), piv.SlotSignature, selfSigned(t, "x", &ec.PublicKey, ec)); err == nil {
		t.Fatal("SetCertificate with a wrong management key succeeded")
	}
}

func TestPIVGoProtectedManagementKey(t *testing.T) {
	p := plugNew(t, vyubikey.Config{})
	yk := open(t, p)
	// Nothing stored yet.
	m, err := yk.Metadata(piv.DefaultPIN)
	if err != nil {
		t.Fatal(err)
	}
	if m.ManagementKey != nil {
		t.Fatal("metadata has a management key")
	}
	// The ykman convention: a random management key, kept in the PIN-protected
	// object.
	newKey := make([]byte, 24)
	rand.Read(newKey)
	if err := yk.SetManagementKey(defaultKey, newKey); err != nil {
		t.Fatal(err)
	}
	if err := yk.SetMetadata(newKey, &piv.Metadata{ManagementKey: &newKey}); err != nil {
		t.Fatal(err)
	}
	// The default key no longer works.
	if err := yk.SetMetadata(defaultKey, &piv.Metadata{ManagementKey: &newKey}); err == nil {
		t.Fatal("old management key still works")
	}
	// A wrong PIN cannot read it; the right one can.
	if _, err := yk.Metadata("000000"); err == nil {
		t.Fatal("Metadata with a wrong PIN")
	}
	m, err = yk.Metadata(piv.DefaultPIN)
	if err != nil {
		t.Fatal(err)
	}
	if m.ManagementKey == nil || !bytes.Equal(*m.ManagementKey, newKey) {
		t.Fatalf("metadata key %x", m.ManagementKey)
	}
	// And it is a working management key.
	if _, err := yk.GenerateKey(*m.ManagementKey, piv.SlotAuthentication,
		piv.Key{Algorithm: piv.AlgorithmEC256, PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyNever}); err != nil {
		t.Fatal(err)
	}
}

func TestPIVGoImportKey(t *testing.T) {
	p := plugNew(t, vyubikey.Config{})
	yk := open(t, p)
	ec256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa4096, _ := rsa.GenerateKey(rand.Reader, 4096)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	r84, _ := piv.RetiredKeyManagementSlot(0x84)
	r85, _ := piv.RetiredKeyManagementSlot(0x85)
	for _, tc := range []struct {
		name string
		slot piv.Slot
		priv crypto.Signer
		pp   piv.PINPolicy
	}{
		{"P256", piv.SlotAuthentication, ec256, piv.PINPolicyOnce},
		{"P384", piv.SlotSignature, ec384, piv.PINPolicyAlways},
		{"RSA2048", piv.SlotKeyManagement, rsa2048, piv.PINPolicyNever},
		{"RSA4096", r84, rsa4096, piv.PINPolicyOnce},
		{"Ed25519", r85, ed, piv.PINPolicyOnce},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// piv-go derives the algorithm from the key, except for Ed25519.
			alg := piv.Algorithm(0)
			if _, ok := tc.priv.(ed25519.PrivateKey); ok {
				alg = piv.AlgorithmEd25519
			}
			err := yk.SetPrivateKeyInsecure(defaultKey, tc.slot, tc.priv, piv.Key{Algorithm: alg, PINPolicy: tc.pp, TouchPolicy: piv.TouchPolicyNever})
			if err != nil {
				t.Fatalf("SetPrivateKeyInsecure: %v", err)
			}
			info, err := yk.KeyInfo(tc.slot)
			if err != nil {
				t.Fatal(err)
			}
			if info.Origin != piv.OriginImported || info.PINPolicy != tc.pp ||
				!info.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(tc.priv.Public()) {
				t.Fatalf("KeyInfo = %+v", info)
			}
			priv, err := yk.PrivateKey(tc.slot, tc.priv.Public(), piv.KeyAuth{PIN: piv.DefaultPIN})
			if err != nil {
				t.Fatal(err)
			}
			checkSign(t, priv, tc.priv.Public())
			// An imported key has no attestation.
			if _, err := yk.Attest(tc.slot); !errors.Is(err, piv.ErrNotFound) {
				t.Fatalf("Attest(imported) = %v", err)
			}
		})
	}
}

func TestPIVGoRetriesAndReset(t *testing.T) {
	p := plugNew(t, vyubikey.Config{})
	yk := open(t, p)
	if err := yk.SetPIN(piv.DefaultPIN, "55555555"); err != nil {
		t.Fatal(err)
	}
	if _, err := yk.GenerateKey(defaultKey, piv.SlotAuthentication,
		piv.Key{Algorithm: piv.AlgorithmEC256, PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyNever}); err != nil {
		t.Fatal(err)
	}
	// SetRetries resets PIN and PUK to the defaults.
	if err := yk.SetRetries(defaultKey, "55555555", 5, 4); err != nil {
		t.Fatal(err)
	}
	if n, err := yk.Retries(); err != nil || n != 5 {
		t.Fatalf("Retries() = %d, %v", n, err)
	}
	if err := yk.VerifyPIN(piv.DefaultPIN); err != nil {
		t.Fatal(err)
	}
	newKey := bytes.Repeat([]byte{0x77}, 32)
	if err := yk.SetManagementKey(defaultKey, newKey); err != nil {
		t.Fatal(err)
	}
	// Reset blocks PIN and PUK first (piv-go does), then factory state.
	if err := yk.Reset(); err != nil {
		t.Fatal(err)
	}
	if n, err := yk.Retries(); err != nil || n != 3 {
		t.Fatalf("Retries() after reset = %d, %v", n, err)
	}
	if _, err := yk.KeyInfo(piv.SlotAuthentication); !errors.Is(err, piv.ErrNotFound) {
		t.Fatalf("key survived reset: %v", err)
	}
	if _, err := yk.GenerateKey(defaultKey, piv.SlotAuthentication,
		piv.Key{Algorithm: piv.AlgorithmEC256, PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyNever}); err != nil {
		t.Fatalf("default management key after reset: %v", err)
	}
	if _, err := yk.AttestationCertificate(); err != nil {
		t.Fatalf("attestation certificate after reset: %v", err)
	}
}

// TestUnplugReplug: keys, certificates and retry counters survive unplugging,
// and a new Card (a restarted process) on the same state file is the same key.
func TestUnplugReplug(t *testing.T) {
	card := newCard(t, vyubikey.Config{Serial: 8080})
	p := pcscdtestPlug(t, card)
	yk, err := piv.Open(p.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := yk.GenerateKey(defaultKey, piv.SlotSignature,
		piv.Key{Algorithm: piv.AlgorithmEC384, PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyNever})
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := yk.PrivateKey(piv.SlotSignature, pub, piv.KeyAuth{PIN: piv.DefaultPIN})
	cert := selfSigned(t, "replug", pub, priv.(crypto.Signer))
	if err := yk.SetCertificate(defaultKey, piv.SlotSignature, cert); err != nil {
		t.Fatal(err)
	}
	var ae piv.AuthErr
	if err := yk.VerifyPIN("000000"); !errors.As(err, &ae) || ae.Retries != 2 {
		t.Fatalf("wrong PIN: %v", err)
	}

	// Pull it out while open: the handle fails.
	p.Unplug(t)
	if _, err := yk.Serial(); err == nil {
		t.Fatal("Serial() on an unplugged card succeeded")
	}
	yk.Close()

	// Same Card object back in.
	p.Replug(t)
	yk = open(t, p)
	if n, err := yk.Retries(); err != nil || n != 2 {
		t.Fatalf("Retries() after replug = %d, %v", n, err)
	}
	if err := yk.VerifyPIN(piv.DefaultPIN); err != nil { // restores the counter
		t.Fatal(err)
	}
	yk.Close()
	p.Unplug(t)

	// A new process: a new Card from the state file.
	card2 := newCard(t, vyubikey.Config{StatePath: statePathOf(t, card)})
	p.Card = card2
	p.Replug(t)
	yk = open(t, p)
	if s, _ := yk.Serial(); s != 8080 {
		t.Fatalf("serial %d", s)
	}
	info, err := yk.KeyInfo(piv.SlotSignature)
	if err != nil {
		t.Fatal(err)
	}
	if !info.PublicKey.(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("key changed across replug")
	}
	got, err := yk.Certificate(piv.SlotSignature)
	if err != nil || !got.Equal(cert) {
		t.Fatalf("certificate after replug: %v", err)
	}
	priv, err = yk.PrivateKey(piv.SlotSignature, pub, piv.KeyAuth{PIN: piv.DefaultPIN})
	if err != nil {
		t.Fatal(err)
	}
	checkSign(t, priv, pub)
	if _, err := (&piv.Verifier{Roots: rootPool(card2)}).Verify(mustAttestCert(t, yk), mustAttest(t, yk, piv.SlotSignature)); err != nil {
		t.Fatal(err)
	}
}

func mustAttestCert(t *testing.T, yk *piv.YubiKey) *x509.Certificate {
	t.Helper()
	c, err := yk.AttestationCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustAttest(t *testing.T, yk *piv.YubiKey, s piv.Slot) *x509.Certificate {
	t.Helper()
	c, err := yk.Attest(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// encryptPKCS1v15 is RSAES-PKCS1-v1_5 by hand (the standard library's is
// deprecated): piv-go's Decrypt unpads only that scheme.
func encryptPKCS1v15(pub *rsa.PublicKey, msg []byte) []byte {
	k := pub.Size()
	em := make([]byte, k)
	em[1] = 2
	ps := em[2 : k-len(msg)-1]
	for i := range ps {
		for ps[i] == 0 {
			rand.Read(ps[i : i+1])
		}
	}
	copy(em[k-len(msg):], msg)
	c := new(big.Int).Exp(new(big.Int).SetBytes(em), big.NewInt(int64(pub.E)), pub.N)
	return c.FillBytes(make([]byte, k))
}
