package cloudkms_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"

	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/cloudkms"
	"github.com/iot-hsm/iot-hsm/internal/kmstest"
)

const ring = "projects/iot-hsm-test/locations/europe-west1/keyRings/ca-ring"

// setup starts the fake KMS with one key ring and the real client against it, with
// timeouts short enough for tests.
func setup(t *testing.T) (*kmstest.Server, *cloudkms.Provider, *cloudkms.Token) {
	t.Helper()
	srv := kmstest.Start(t)
	srv.GenerationDelay = 50 * time.Millisecond
	if err := srv.AddKeyRing(ring); err != nil {
		t.Fatal(err)
	}
	p, err := cloudkms.New(context.Background(), cloudkms.Options{
		KeyRings:      []cloudkms.KeyRing{{Name: ring, ID: "ca-ring"}},
		ClientOptions: srv.ClientOptions(),
		CallTimeout:   time.Second, Backoff: 10 * time.Millisecond, SignTimeout: 10 * time.Second,
		ProbeInterval: time.Millisecond, ProbeTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	toks, err := p.Tokens(context.Background())
	if err != nil || len(toks) != 1 {
		t.Fatalf("tokens %v %v", toks, err)
	}
	tok := toks[0].(*cloudkms.Token)
	if info := tok.Info(); !info.Present || !info.PIN.Set || info.ID != "cloudkms-ca-ring" || info.Kind != hsm.KindCloudKMS || info.Serial != ring {
		t.Fatalf("info %+v", info)
	}
	return srv, p, tok
}

func digestOf(h crypto.Hash, msg string) []byte {
	switch h {
	case crypto.SHA384:
		d := sha512.Sum384([]byte(msg))
		return d[:]
	case crypto.SHA512:
		d := sha512.Sum512([]byte(msg))
		return d[:]
	}
	d := sha256.Sum256([]byte(msg))
	return d[:]
}

// selfSigned has the slot key sign a certificate, as the CA engine does, and checks it.
func selfSigned(t *testing.T, s crypto.Signer, alg x509.SignatureAlgorithm) {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "KMS test"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		SignatureAlgorithm: alg}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Fatal(err)
	}
}

func TestGenerateSignAttest(t *testing.T) {
	srv, _, tok := setup(t)
	ctx := context.Background()
	pub, err := tok.Generate(ctx, "root", hsm.P256, hsm.KeyOptions{Label: "Lab Root CA"})
	if err != nil {
		t.Fatal(err)
	}
	if kt, _ := hsm.KeyTypeOf(pub); kt != hsm.P256 {
		t.Fatalf("generated %s", kt)
	}
	// "root" and "root/1" are the same slot.
	again, err := tok.PublicKey(ctx, "root/1")
	if err != nil || !pub.(*ecdsa.PublicKey).Equal(again) {
		t.Fatalf("public key of root/1: %v", err)
	}
	slots, err := tok.Slots(ctx)
	if err != nil || len(slots) != 1 || slots[0].Slot != "root/1" || slots[0].KeyType != hsm.P256 || slots[0].Label != "lab-root-ca" || !slots[0].Occupied {
		t.Fatalf("slots %+v %v", slots, err)
	}

	s, err := tok.Signer(ctx, "root")
	if err != nil {
		t.Fatal(err)
	}
	d := digestOf(crypto.SHA256, "hello")
	sig, err := s.Sign(rand.Reader, d, crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d, sig) {
		t.Fatalf("signature: %v", err)
	}
	selfSigned(t, s, 0)
	if _, err := s.Sign(rand.Reader, digestOf(crypto.SHA384, "x"), crypto.SHA384); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("a P-256 key version signs SHA-256 only: %v", err)
	}

	// Attestation: the chains, and the statement covering this very key.
	certs, err := tok.Attest(ctx, "root")
	if err != nil || len(certs) != 5 { // vendor card + root, Google card + partition + root
		t.Fatalf("attestation chain of %d: %v", len(certs), err)
	}
	a, err := tok.Attestation(ctx, "root/1")
	if err != nil {
		t.Fatal(err)
	}
	if a.Format != "CAVIUM_V2_COMPRESSED" || len(a.CaviumCerts) != 2 || a.CaviumCerts[1].Subject.CommonName != srv.AttestationRoots()[0].Subject.CommonName {
		t.Fatalf("attestation %+v", a)
	}
	if err := kmstest.VerifyStatement(a.Statement, a.CaviumCerts[0], pub); err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(a.PEM())
	if block == nil || block.Type != "CLOUD KMS ATTESTATION" || block.Headers["Format"] != "CAVIUM_V2_COMPRESSED" ||
		!strings.HasSuffix(block.Headers["Key-Version"], "/cryptoKeys/root/cryptoKeyVersions/1") || strings.Count(string(rest), "BEGIN CERTIFICATE") != 6 {
		t.Fatalf("attestation PEM:\n%s", a.PEM())
	}

	// What a key ring cannot do.
	if _, err := tok.Generate(ctx, "root", hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("generate over an existing key: %v", err)
	}
	if _, err := tok.Generate(ctx, "root", hsm.P256, hsm.KeyOptions{Overwrite: true}); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("generate with overwrite over an existing key: %v", err)
	}
	id := tok.Info().ID
	if _, err := hsm.Import(ctx, tok, "imp", s, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrUnsupported) || !strings.Contains(err.Error(), id) {
		t.Fatalf("import: %v", err)
	}
	if err := hsm.Login(ctx, tok, "1234"); !errors.Is(err, hsm.ErrUnsupported) || !strings.Contains(err.Error(), id) {
		t.Fatalf("login: %v", err)
	}
	if err := hsm.StoreCertificate(ctx, tok, "root", nil); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("store certificate: %v", err)
	}
	if _, err := tok.PublicKey(ctx, "nokey/1"); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}

	// Destroying schedules the version's destruction; it is no longer a slot.
	if err := tok.DeleteKey(ctx, "root"); err != nil {
		t.Fatal(err)
	}
	if slots, _ := tok.Slots(ctx); len(slots) != 0 {
		t.Fatalf("slots after destroy: %+v", slots)
	}
	if _, err := tok.Signer(ctx, "root"); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("signer of a destroyed version: %v", err)
	}
}

func TestKeyTypesAndPadding(t *testing.T) {
	_, _, tok := setup(t)
	ctx := context.Background()
	for _, c := range []struct {
		key string
		kt  hsm.KeyType
		alg x509.SignatureAlgorithm
	}{
		{"p384", hsm.P384, x509.ECDSAWithSHA384},
		{"rsa2048", hsm.RSA2048, x509.SHA256WithRSA},
		{"rsa3072", hsm.RSA3072, x509.SHA256WithRSA},
		{"rsa4096", hsm.RSA4096, x509.SHA256WithRSA},
		{"rsa2048-pss", hsm.RSA2048, x509.SHA256WithRSAPSS},
	} {
		t.Run(c.key, func(t *testing.T) {
			pub, err := tok.Generate(ctx, c.key, c.kt, hsm.KeyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if kt, _ := hsm.KeyTypeOf(pub); kt != c.kt {
				t.Fatalf("generated %s", kt)
			}
			s, err := tok.Signer(ctx, c.key)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.(*cloudkms.Signer).SignatureAlgorithm(); got != c.alg {
				t.Fatalf("signature algorithm %v, want %v", got, c.alg)
			}
			selfSigned(t, s, c.alg)
			if c.kt.IsRSA() {
				// The padding is the key version's: the other one is refused, never
				// made under the wrong name.
				var other crypto.SignerOpts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
				if c.alg == x509.SHA256WithRSAPSS {
					other = crypto.SHA256
				}
				if _, err := s.Sign(rand.Reader, digestOf(crypto.SHA256, "x"), other); !errors.Is(err, hsm.ErrUnsupported) {
					t.Fatalf("other padding: %v", err)
				}
			}
		})
	}
	if _, err := tok.Generate(ctx, "ec-pss", hsm.P256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrInvalidSlot) {
		t.Fatalf("an EC key named -pss: %v", err)
	}
}

func TestExistingVersionsAndSlotNames(t *testing.T) {
	srv, _, tok := setup(t)
	srv.PageSize = 1 // every list takes several pages
	ctx := context.Background()
	v1, err := srv.AddKey(ring, "legacy", kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256, kmspb.ProtectionLevel_SOFTWARE)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := srv.AddVersion(ring + "/cryptoKeys/legacy")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.AddVersion(ring + "/cryptoKeys/legacy"); err != nil {
		t.Fatal(err)
	}
	if err := srv.SetState(v1, kmspb.CryptoKeyVersion_DISABLED); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.AddKey(ring, "other", kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256, kmspb.ProtectionLevel_HSM); err != nil {
		t.Fatal(err)
	}
	slots, err := tok.Slots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range slots {
		names = append(names, s.Slot+":"+string(s.KeyType))
	}
	if got := strings.Join(names, " "); got != "legacy/2:rsa2048 legacy/3:rsa2048 other/1:p256" {
		t.Fatalf("slots: %s", got)
	}
	pub, err := tok.PublicKey(ctx, "legacy/2")
	want, _ := srv.PublicKey(v2)
	if err != nil || !pub.(*rsa.PublicKey).Equal(want) {
		t.Fatalf("public key of legacy/2: %v", err)
	}
	if _, err := tok.PublicKey(ctx, "legacy/1"); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("a disabled version: %v", err)
	}
	if _, err := tok.Attest(ctx, "legacy/2"); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("attestation of a software key: %v", err)
	}
	for _, bad := range []string{"legacy/02", "legacy/0", "legacy/x", "a b/1", "legacy/1/2", "", strings.Repeat("k", 64)} {
		if _, err := tok.PublicKey(ctx, bad); !errors.Is(err, hsm.ErrInvalidSlot) {
			t.Errorf("slot %q: %v", bad, err)
		}
	}
}

// sign makes one signature with a fresh digest, returning the error.
func sign(t *testing.T, s crypto.Signer) ([]byte, error) {
	t.Helper()
	return s.Sign(rand.Reader, digestOf(crypto.SHA256, t.Name()), crypto.SHA256)
}

func TestFaultsAreCaught(t *testing.T) {
	srv, p, tok := setup(t)
	ctx := context.Background()
	if _, err := tok.Generate(ctx, "k", hsm.P256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	calls := func() int { return srv.Calls("AsymmetricSign") }

	for _, c := range []struct {
		name  string
		fault kmstest.Fault
		want  error
		calls int // AsymmetricSign calls made: retried faults take every attempt
	}{
		{"unavailable", kmstest.Unavailable, hsm.ErrOffline, 3},
		{"deadline", kmstest.Hang, hsm.ErrOffline, 3},
		{"quota", kmstest.ResourceExhausted, hsm.ErrBusy, 1},
		{"permission", kmstest.PermissionDenied, hsm.ErrUnauthorized, 1},
		{"signature crc", kmstest.BadSignatureCRC, cloudkms.ErrIntegrity, 3},
		{"digest not verified", kmstest.UnverifiedDigest, cloudkms.ErrIntegrity, 3},
		{"other key's name", kmstest.WrongName, cloudkms.ErrIntegrity, 3},
		{"corrupt signature", kmstest.CorruptSignature, cloudkms.ErrIntegrity, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Every time: the call fails as mapped, and no signature comes out.
			srv.Inject("AsymmetricSign", c.fault, -1)
			before := calls()
			sig, err := sign(t, s)
			srv.ClearFaults()
			if !errors.Is(err, c.want) || sig != nil {
				t.Fatalf("got %x, %v; want %v", sig, err, c.want)
			}
			if n := calls() - before; n != c.calls {
				t.Fatalf("%d calls, want %d", n, c.calls)
			}
			if errors.Is(c.want, hsm.ErrBusy) && !strings.Contains(err.Error(), "retry") {
				t.Fatalf("busy without retry advice: %v", err)
			}
			// Once: a retryable fault is healed by the next attempt.
			srv.Inject("AsymmetricSign", c.fault, 1)
			sig, err = sign(t, s)
			srv.ClearFaults()
			if c.calls > 1 && err != nil {
				t.Fatalf("one %s was not retried: %v", c.name, err)
			}
			if c.calls == 1 && !errors.Is(err, c.want) {
				t.Fatalf("one %s: %v", c.name, err)
			}
			if err == nil && sig == nil {
				t.Fatal("no signature and no error")
			}
			if _, err := p.Tokens(ctx); err != nil || !tok.Info().Present {
				t.Fatalf("key ring not back after the fault: %v", err)
			}
		})
	}

	t.Run("public key crc", func(t *testing.T) {
		if _, err := srv.AddKey(ring, "fresh", kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256, kmspb.ProtectionLevel_HSM); err != nil {
			t.Fatal(err)
		}
		srv.Inject("GetPublicKey", kmstest.BadPublicKeyCRC, -1)
		_, err := tok.Signer(ctx, "fresh/1")
		srv.ClearFaults()
		if !errors.Is(err, cloudkms.ErrIntegrity) {
			t.Fatalf("a public key failing its CRC: %v", err)
		}
		// Nothing was cached from the bad reply.
		if _, err := tok.Signer(ctx, "fresh/1"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("permission denied on the key ring", func(t *testing.T) {
		srv.Inject("GetKeyRing", kmstest.PermissionDenied, 1)
		time.Sleep(2 * time.Millisecond) // past ProbeInterval
		p.Tokens(ctx)
		if info := tok.Info(); !info.Present || info.PIN.Set {
			t.Fatalf("key ring refusing our credentials: %+v", info)
		}
		time.Sleep(2 * time.Millisecond)
		p.Tokens(ctx)
		if info := tok.Info(); !info.Present || !info.PIN.Set {
			t.Fatalf("key ring accepting them again: %+v", info)
		}
	})

	t.Run("lost create reply", func(t *testing.T) {
		// The key was made but the reply lost: the retry finds the key, recognises
		// it as its own and goes on, instead of failing with "exists".
		srv.Inject("CreateCryptoKey", kmstest.LoseReply, 1)
		if _, err := tok.Generate(ctx, "retried", hsm.P256, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
		if n := srv.Calls("CreateCryptoKey"); n < 2 {
			t.Fatalf("%d create calls", n)
		}
	})
}

func TestOutage(t *testing.T) {
	srv, p, tok := setup(t)
	ctx := context.Background()
	if _, err := tok.Generate(ctx, "k", hsm.P384, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if _, err := s.Sign(rand.Reader, digestOf(crypto.SHA384, "x"), crypto.SHA384); !errors.Is(err, hsm.ErrOffline) {
		t.Fatalf("sign during an outage: %v", err)
	}
	p.Tokens(ctx)
	if tok.Info().Present {
		t.Fatal("key ring present during an outage")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for p.Tokens(ctx); !tok.Info().Present; p.Tokens(ctx) {
		if time.Now().After(deadline) {
			t.Fatal("key ring not back after the outage")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := s.Sign(rand.Reader, digestOf(crypto.SHA384, "x"), crypto.SHA384); err != nil {
		t.Fatal(err)
	}
}

func TestNewRefusesBadKeyRings(t *testing.T) {
	for name, krs := range map[string][]cloudkms.KeyRing{
		"none":      nil,
		"bad name":  {{Name: "keyRings/x", ID: "x"}},
		"bad id":    {{Name: ring, ID: "Ca_Ring"}},
		"same id":   {{Name: ring, ID: "a"}, {Name: ring + "2", ID: "a"}},
		"same ring": {{Name: ring, ID: "a"}, {Name: ring, ID: "b"}},
	} {
		if _, err := cloudkms.New(context.Background(), cloudkms.Options{KeyRings: krs}); !errors.Is(err, hsm.ErrInvalidConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
