package pemkey

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Fixtures come from the real openssl at test time, so the parser is checked
// against what operators actually feed it rather than against what Go itself
// would write.

const (
	testPassword  = "Corr3ct-Horse-Battery-Staple"
	wrongPassword = "Wr0ng-Password-Zebra"
)

var sentinels = []error{ErrNoKey, ErrPasswordNeeded, ErrBadPassword, ErrUnsupported}

func openssl(t *testing.T, args ...string) []byte {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is required to generate the test keys: %v", err)
	}
	cmd := exec.Command(path, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkErr asserts err matches exactly one sentinel, the wanted one, and that
// its message leaks neither password.
func checkErr(t *testing.T, err, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", want)
	}
	for _, s := range sentinels {
		if got := errors.Is(err, s); got != (s == want) {
			t.Errorf("errors.Is(%q, %q) = %v", err, s, got)
		}
	}
	for _, pw := range []string{testPassword, wrongPassword} {
		if strings.Contains(err.Error(), pw) {
			t.Errorf("error %q contains a password", err)
		}
	}
	if !strings.HasPrefix(err.Error(), "pemkey: ") {
		t.Errorf("error %q lacks the package prefix", err)
	}
}

type keyKind struct {
	name    string
	genpkey []string // algorithm options for openssl genpkey
	rsaBits int
	curve   elliptic.Curve
	ecparam string // curve name for openssl ecparam
}

var keyKinds = []keyKind{
	{name: "rsa2048", genpkey: []string{"-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"}, rsaBits: 2048},
	{name: "p256", genpkey: []string{"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"}, curve: elliptic.P256(), ecparam: "prime256v1"},
	{name: "p384", genpkey: []string{"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"}, curve: elliptic.P384(), ecparam: "secp384r1"},
}

func genpkey(t *testing.T, opts ...string) []byte {
	return openssl(t, append([]string{"genpkey"}, opts...)...)
}

type variant struct {
	name      string
	marker    string // proves openssl wrote the format the variant claims to test
	encrypted bool
	make      func(t *testing.T, k keyKind, base string) []byte
}

func traditionalMarker(k keyKind) string {
	if k.rsaBits != 0 {
		return "-----BEGIN RSA PRIVATE KEY-----"
	}
	return "-----BEGIN EC PRIVATE KEY-----"
}

const (
	markerPKCS8    = "-----BEGIN PRIVATE KEY-----"
	markerEncPKCS8 = "-----BEGIN ENCRYPTED PRIVATE KEY-----"
	markerLegacy   = "Proc-Type: 4,ENCRYPTED"
	markerECParams = "-----BEGIN EC PARAMETERS-----"
)

func variantsFor(k keyKind) []variant {
	pass := "pass:" + testPassword
	vs := []variant{
		{"pkcs8", markerPKCS8, false, func(t *testing.T, k keyKind, base string) []byte {
			data, err := os.ReadFile(base)
			if err != nil {
				t.Fatal(err)
			}
			return data
		}},
		{"traditional", traditionalMarker(k), false, func(t *testing.T, k keyKind, base string) []byte {
			return openssl(t, "pkey", "-in", base, "-traditional")
		}},
		{"pkcs8-genpkey-aes256", markerEncPKCS8, true, func(t *testing.T, k keyKind, base string) []byte {
			return genpkey(t, append(k.genpkey, "-aes-256-cbc", "-pass", pass)...)
		}},
		{"pkcs8-v2-aes128", markerEncPKCS8, true, func(t *testing.T, k keyKind, base string) []byte {
			return openssl(t, "pkcs8", "-topk8", "-in", base, "-v2", "aes-128-cbc", "-passout", pass)
		}},
		{"pkcs8-v2-des3-sha1", markerEncPKCS8, true, func(t *testing.T, k keyKind, base string) []byte {
			return openssl(t, "pkcs8", "-topk8", "-in", base, "-v2", "des3", "-v2prf", "hmacWithSHA1", "-passout", pass)
		}},
		{"pkcs8-scrypt", markerEncPKCS8, true, func(t *testing.T, k keyKind, base string) []byte {
			return openssl(t, "pkcs8", "-topk8", "-in", base, "-scrypt", "-passout", pass)
		}},
		{"legacy-aes256", markerLegacy, true, func(t *testing.T, k keyKind, base string) []byte {
			return openssl(t, "pkey", "-in", base, "-traditional", "-aes256", "-passout", pass)
		}},
		{"legacy-des3", markerLegacy, true, func(t *testing.T, k keyKind, base string) []byte {
			return openssl(t, "pkey", "-in", base, "-traditional", "-des3", "-passout", pass)
		}},
	}
	if k.rsaBits != 0 {
		bits := "2048"
		vs = append(vs,
			variant{"genrsa-traditional", traditionalMarker(k), false, func(t *testing.T, k keyKind, base string) []byte {
				return openssl(t, "genrsa", "-traditional", bits)
			}},
			variant{"genrsa-legacy-aes256", markerLegacy, true, func(t *testing.T, k keyKind, base string) []byte {
				return openssl(t, "genrsa", "-traditional", "-aes256", "-passout", pass, bits)
			}},
		)
	} else {
		vs = append(vs,
			variant{"ecparam-noout", traditionalMarker(k), false, func(t *testing.T, k keyKind, base string) []byte {
				return openssl(t, "ecparam", "-genkey", "-name", k.ecparam, "-noout")
			}},
			variant{"ecparam-with-params", markerECParams, false, func(t *testing.T, k keyKind, base string) []byte {
				return openssl(t, "ecparam", "-genkey", "-name", k.ecparam)
			}},
			variant{"ec-legacy-aes256", markerLegacy, true, func(t *testing.T, k keyKind, base string) []byte {
				return openssl(t, "ec", "-in", base, "-aes256", "-passout", pass)
			}},
		)
	}
	return vs
}

func TestParseOpenSSLKeys(t *testing.T) {
	for _, k := range keyKinds {
		t.Run(k.name, func(t *testing.T) {
			dir := t.TempDir()
			base := writeFile(t, dir, "base.pem", genpkey(t, k.genpkey...))
			for _, v := range variantsFor(k) {
				t.Run(v.name, func(t *testing.T) {
					data := v.make(t, k, base)
					if !bytes.Contains(data, []byte(v.marker)) {
						t.Fatalf("openssl output lacks %q:\n%s", v.marker, data)
					}
					file := writeFile(t, t.TempDir(), "key.pem", data)
					pubPEM := openssl(t, "pkey", "-in", file, "-passin", "pass:"+testPassword, "-pubout")

					var pw []byte
					if v.encrypted {
						pw = []byte(testPassword)
					}
					key, err := Parse(data, pw)
					if err != nil {
						t.Fatalf("Parse: %v", err)
					}
					checkKind(t, key, k)
					checkPublic(t, key, pubPEM)
					checkSignsForOpenSSL(t, key, pubPEM)

					if !v.encrypted {
						// A password typed for a plain key must not get in the way.
						if _, err := Parse(data, []byte(testPassword)); err != nil {
							t.Errorf("Parse with unneeded password: %v", err)
						}
						return
					}
					_, err = Parse(data, nil)
					checkErr(t, err, ErrPasswordNeeded)
					_, err = Parse(data, []byte{})
					checkErr(t, err, ErrPasswordNeeded)
					_, err = Parse(data, []byte(wrongPassword))
					checkErr(t, err, ErrBadPassword)
				})
			}
		})
	}
}

func checkKind(t *testing.T, key crypto.Signer, k keyKind) {
	t.Helper()
	switch key := key.(type) {
	case *rsa.PrivateKey:
		if k.rsaBits == 0 || key.N.BitLen() != k.rsaBits {
			t.Fatalf("got RSA %d bits, want %s", key.N.BitLen(), k.name)
		}
	case *ecdsa.PrivateKey:
		if k.curve == nil || key.Curve != k.curve {
			t.Fatalf("got EC %s, want %s", key.Curve.Params().Name, k.name)
		}
	default:
		t.Fatalf("got %T, want %s", key, k.name)
	}
}

func checkPublic(t *testing.T, key crypto.Signer, pubPEM []byte) {
	t.Helper()
	b, _ := pem.Decode(pubPEM)
	if b == nil || b.Type != "PUBLIC KEY" {
		t.Fatalf("openssl printed no public key:\n%s", pubPEM)
	}
	want, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !got.Equal(want) {
		t.Fatal("public key differs from the one openssl derives from the file")
	}
}

// checkSignsForOpenSSL has openssl verify a signature made with the parsed key,
// and also reject one over a different message so the check cannot pass
// vacuously.
func checkSignsForOpenSSL(t *testing.T, key crypto.Signer, pubPEM []byte) {
	t.Helper()
	dir := t.TempDir()
	msg := []byte("iot-hsm import check")
	digest := sha256.Sum256(msg)
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	pub := writeFile(t, dir, "pub.pem", pubPEM)
	sigFile := writeFile(t, dir, "sig", sig)
	good := writeFile(t, dir, "good", msg)
	bad := writeFile(t, dir, "bad", append(msg, '!'))
	openssl(t, "dgst", "-sha256", "-verify", pub, "-signature", sigFile, good)
	if err := exec.Command("openssl", "dgst", "-sha256", "-verify", pub, "-signature", sigFile, bad).Run(); err == nil {
		t.Fatal("openssl accepted the signature for a different message")
	}
}

// The legacy format's only integrity check is the CBC padding, which a wrong
// password passes about once in 256 tries. Content that decrypts cleanly but
// is not a key stands in for that case deterministically.
func TestParseLegacyGarbageIsBadPassword(t *testing.T) {
	for _, typ := range []string{"RSA PRIVATE KEY", "EC PRIVATE KEY"} {
		t.Run(typ, func(t *testing.T) {
			//lint:ignore SA1019 building a legacy encrypted block is the point of the test.
			b, err := x509.EncryptPEMBlock(rand.Reader, typ, []byte("definitely not DER"), []byte(testPassword), x509.PEMCipherAES256) //nolint:staticcheck // see lint:ignore above
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse(pem.EncodeToMemory(b), []byte(testPassword))
			checkErr(t, err, ErrBadPassword)
		})
	}
}

func TestParseRSASizes(t *testing.T) {
	for _, bits := range []string{"3072", "4096"} {
		t.Run(bits, func(t *testing.T) {
			data := genpkey(t, "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:"+bits)
			key, err := Parse(data, nil)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			rk, ok := key.(*rsa.PrivateKey)
			if !ok || strconv.Itoa(rk.N.BitLen()) != bits {
				t.Fatalf("got %T, want RSA %s", key, bits)
			}
			file := writeFile(t, t.TempDir(), "key.pem", data)
			checkPublic(t, key, openssl(t, "pkey", "-in", file, "-pubout"))
		})
	}
}

func TestParseNoKey(t *testing.T) {
	dir := t.TempDir()
	keyPEM := genpkey(t, "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
	keyFile := writeFile(t, dir, "key.pem", keyPEM)
	cert := openssl(t, "req", "-x509", "-new", "-key", keyFile, "-subj", "/CN=pemkey test", "-days", "1")
	rsaTrad := openssl(t, "pkey", "-in", writeFile(t, dir, "rsa.pem", genpkey(t, keyKinds[0].genpkey...)), "-traditional")

	random := make([]byte, 1024)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	// A valid PEM wrapper around a key whose CRT coefficient was altered:
	// structurally fine, mathematically broken.
	b, _ := pem.Decode(rsaTrad)
	b.Bytes[len(b.Bytes)-5] ^= 0x55
	damagedRSA := pem.EncodeToMemory(b)

	cases := map[string][]byte{
		"nil":            nil,
		"empty":          {},
		"text":           []byte("this is not a key\n"),
		"random":         random,
		"certificate":    cert,
		"public key":     openssl(t, "pkey", "-in", keyFile, "-pubout"),
		"ec parameters":  openssl(t, "ecparam", "-name", "prime256v1"),
		"garbage pkcs8":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("not DER at all")}),
		"garbage sec1":   pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x01}}),
		"garbage pkcs1":  pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte{0x30, 0x00}}),
		"garbage enc":    pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{0x30, 0x00}}),
		"damaged rsa":    damagedRSA,
		"two keys":       append(append([]byte{}, keyPEM...), rsaTrad...),
		"truncated pem":  keyPEM[:len(keyPEM)/2],
		"pem no newline": bytes.ReplaceAll(keyPEM, []byte("\n"), nil),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			key, err := Parse(data, []byte(testPassword))
			if key != nil {
				t.Errorf("got a key")
			}
			checkErr(t, err, ErrNoKey)
		})
	}

	// A key bundled with its certificate is still exactly one key.
	if _, err := Parse(append(append([]byte{}, cert...), keyPEM...), nil); err != nil {
		t.Errorf("certificate + key bundle: %v", err)
	}
}

func TestParseUnsupported(t *testing.T) {
	dir := t.TempDir()
	pass := "pass:" + testPassword
	rsa1024 := writeFile(t, dir, "rsa1024.pem", genpkey(t, "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"))
	p521 := writeFile(t, dir, "p521.pem", genpkey(t, "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"))
	k1 := writeFile(t, dir, "k1.pem", genpkey(t, "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"))
	p256 := writeFile(t, dir, "p256.pem", genpkey(t, keyKinds[1].genpkey...))
	legacyP256 := openssl(t, "pkey", "-in", p256, "-traditional", "-aes256", "-passout", pass)

	cases := map[string][]byte{
		"rsa1024 pkcs8":         readFile(t, rsa1024),
		"rsa1024 pkcs1":         openssl(t, "pkey", "-in", rsa1024, "-traditional"),
		"rsa1024 legacy enc":    openssl(t, "pkey", "-in", rsa1024, "-traditional", "-aes256", "-passout", pass),
		"rsa1024 enc pkcs8":     openssl(t, "pkcs8", "-topk8", "-in", rsa1024, "-v2", "aes-256-cbc", "-passout", pass),
		"rsa512 pkcs1":          openssl(t, "pkey", "-in", writeFile(t, dir, "rsa512.pem", genpkey(t, "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512")), "-traditional"),
		"rsa 3 primes":          genpkey(t, "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-pkeyopt", "rsa_keygen_primes:3"),
		"p521 pkcs8":            readFile(t, p521),
		"p521 sec1":             openssl(t, "pkey", "-in", p521, "-traditional"),
		"p521 enc pkcs8":        openssl(t, "pkcs8", "-topk8", "-in", p521, "-v2", "aes-256-cbc", "-passout", pass),
		"secp256k1 pkcs8":       readFile(t, k1),
		"secp256k1 sec1":        openssl(t, "pkey", "-in", k1, "-traditional"),
		"p256 explicit pkcs8":   openssl(t, "pkey", "-in", p256, "-ec_param_enc", "explicit"),
		"p256 explicit sec1":    openssl(t, "ec", "-in", p256, "-param_enc", "explicit"),
		"ed25519":               genpkey(t, "-algorithm", "ED25519"),
		"x25519":                genpkey(t, "-algorithm", "X25519"),
		"pbes1 3des":            openssl(t, "pkcs8", "-topk8", "-in", p256, "-v1", "PBE-SHA1-3DES", "-passout", pass),
		"pbkdf2 sha512":         openssl(t, "pkcs8", "-topk8", "-in", p256, "-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA512", "-passout", pass),
		"legacy camellia":       openssl(t, "pkey", "-in", p256, "-traditional", "-camellia-256-cbc", "-passout", pass),
		"legacy unknown cipher": bytes.Replace(legacyP256, []byte("AES-256-CBC"), []byte("ROT13-CBC"), 1),
		"openssh block":         pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: []byte("openssh-key-v1\x00")}),
		"dsa block":             pem.EncodeToMemory(&pem.Block{Type: "DSA PRIVATE KEY", Bytes: []byte{0x30, 0x00}}),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			key, err := Parse(data, []byte(testPassword))
			if key != nil {
				t.Errorf("got a key")
			}
			checkErr(t, err, ErrUnsupported)
		})
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestParseEncryptedEnvelope covers envelopes openssl will not write: each one
// either makes the pkcs8 library panic, decrypt with the wrong algorithm, or
// burn unbounded CPU or memory, so Parse has to catch them first.
func TestParseEncryptedEnvelope(t *testing.T) {
	dir := t.TempDir()
	base := writeFile(t, dir, "p256.pem", genpkey(t, keyKinds[1].genpkey...))
	pass := "pass:" + testPassword
	pbkdf2Key := decodeEnvelope(t, openssl(t, "pkcs8", "-topk8", "-in", base, "-v2", "aes-256-cbc", "-passout", pass))
	scryptKey := decodeEnvelope(t, openssl(t, "pkcs8", "-topk8", "-in", base, "-scrypt", "-passout", pass))

	// Sanity: the untouched envelope round-trips through the helpers.
	if _, err := Parse(pbkdf2Key.encode(t), []byte(testPassword)); err != nil {
		t.Fatalf("unmodified envelope: %v", err)
	}

	cases := []struct {
		name   string
		env    envelope
		modify func(e *envelope)
		want   error
	}{
		{"short iv", pbkdf2Key, func(e *envelope) { e.iv = e.iv[:8] }, ErrNoKey},
		{"ciphertext not whole blocks", pbkdf2Key, func(e *envelope) { e.info.EncryptedData = e.info.EncryptedData[:len(e.info.EncryptedData)-1] }, ErrNoKey},
		{"empty ciphertext", pbkdf2Key, func(e *envelope) { e.info.EncryptedData = nil }, ErrNoKey},
		{"zero iterations", pbkdf2Key, func(e *envelope) { e.pbkdf2.Iter = 0 }, ErrNoKey},
		{"aes-256-gcm", pbkdf2Key, func(e *envelope) { e.pbes2.Scheme.Algorithm = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 46} }, ErrUnsupported},
		{"too many iterations", pbkdf2Key, func(e *envelope) { e.pbkdf2.Iter = maxPBKDF2Iterations + 1 }, ErrUnsupported},
		{"keyLength with sha256", pbkdf2Key, func(e *envelope) { e.pbkdf2.KeyLength = 32 }, ErrUnsupported},
		{"unknown kdf", pbkdf2Key, func(e *envelope) { e.pbes2.KDF.Algorithm = asn1.ObjectIdentifier{1, 2, 3, 4} }, ErrUnsupported},
		{"scrypt huge N", scryptKey, func(e *envelope) { e.scrypt.N = 1 << 24 }, ErrUnsupported},
		{"scrypt huge p", scryptKey, func(e *envelope) { e.scrypt.P = 1 << 20 }, ErrUnsupported},
		{"scrypt N not power of two", scryptKey, func(e *envelope) { e.scrypt.N = 1000 }, ErrNoKey},
		{"scrypt r zero", scryptKey, func(e *envelope) { e.scrypt.R = 0 }, ErrNoKey},
		{"flipped ciphertext", pbkdf2Key, func(e *envelope) { e.info.EncryptedData[0] ^= 1 }, ErrBadPassword},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := c.env.clone()
			c.modify(&e)
			_, err := Parse(e.encode(t), []byte(testPassword))
			checkErr(t, err, c.want)
		})
	}
}

// envelope is an encrypted PKCS#8 key taken apart into the structures the
// package checks, so tests can alter single fields and re-encode.
type envelope struct {
	info   encryptedPrivateKeyInfo
	pbes2  pbes2Params
	iv     []byte
	pbkdf2 *pbkdf2Params
	scrypt *scryptParams
}

func decodeEnvelope(t *testing.T, data []byte) envelope {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "ENCRYPTED PRIVATE KEY" {
		t.Fatalf("not an encrypted PKCS#8 key:\n%s", data)
	}
	var e envelope
	mustUnmarshal(t, b.Bytes, &e.info)
	mustUnmarshal(t, e.info.Algo.Parameters.FullBytes, &e.pbes2)
	mustUnmarshal(t, e.pbes2.Scheme.Parameters.FullBytes, &e.iv)
	switch {
	case e.pbes2.KDF.Algorithm.Equal(oidPBKDF2):
		e.pbkdf2 = new(pbkdf2Params)
		mustUnmarshal(t, e.pbes2.KDF.Parameters.FullBytes, e.pbkdf2)
	case e.pbes2.KDF.Algorithm.Equal(oidScrypt):
		e.scrypt = new(scryptParams)
		mustUnmarshal(t, e.pbes2.KDF.Parameters.FullBytes, e.scrypt)
	default:
		t.Fatalf("unexpected KDF %s", e.pbes2.KDF.Algorithm)
	}
	return e
}

func (e envelope) clone() envelope {
	c := e
	c.info.EncryptedData = bytes.Clone(e.info.EncryptedData)
	c.iv = bytes.Clone(e.iv)
	if e.pbkdf2 != nil {
		p := *e.pbkdf2
		c.pbkdf2 = &p
	}
	if e.scrypt != nil {
		s := *e.scrypt
		c.scrypt = &s
	}
	return c
}

func (e envelope) encode(t *testing.T) []byte {
	t.Helper()
	if e.pbkdf2 != nil {
		e.pbes2.KDF.Parameters = asn1.RawValue{FullBytes: mustMarshal(t, *e.pbkdf2)}
	} else {
		e.pbes2.KDF.Parameters = asn1.RawValue{FullBytes: mustMarshal(t, *e.scrypt)}
	}
	e.pbes2.Scheme.Parameters = asn1.RawValue{FullBytes: mustMarshal(t, e.iv)}
	e.info.Algo = pkix.AlgorithmIdentifier{Algorithm: e.info.Algo.Algorithm, Parameters: asn1.RawValue{FullBytes: mustMarshal(t, e.pbes2)}}
	return pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: mustMarshal(t, e.info)})
}

func mustUnmarshal(t *testing.T, der []byte, v any) {
	t.Helper()
	if rest, err := asn1.Unmarshal(der, v); err != nil || len(rest) > 0 {
		t.Fatalf("asn1.Unmarshal into %T: %v (%d trailing bytes)", v, err, len(rest))
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	der, err := asn1.Marshal(v)
	if err != nil {
		t.Fatalf("asn1.Marshal %T: %v", v, err)
	}
	return der
}

func TestWipeRSA(t *testing.T) {
	key, err := Parse(openssl(t, "genrsa", "-traditional", "2048"), nil)
	if err != nil {
		t.Fatal(err)
	}
	k := key.(*rsa.PrivateKey)
	// Keep handles on the backing words: zeroing must reach the memory, not
	// just make the big.Int report zero.
	words := [][]big.Word{k.D.Bits(), k.Precomputed.Dp.Bits(), k.Precomputed.Dq.Bits(), k.Precomputed.Qinv.Bits()}
	for _, p := range k.Primes {
		words = append(words, p.Bits())
	}

	Wipe(k)

	if k.D.Sign() != 0 {
		t.Error("D is not zero")
	}
	for i, p := range k.Primes {
		if p.Sign() != 0 {
			t.Errorf("prime %d is not zero", i)
		}
	}
	for i, w := range words {
		if !allZero(w[:cap(w)]) {
			t.Errorf("backing words of value %d still hold data", i)
		}
	}
	digest := sha256.Sum256([]byte("after wipe"))
	if _, err := k.Sign(rand.Reader, digest[:], crypto.SHA256); err == nil {
		t.Error("wiped RSA key still signs")
	}
}

func TestWipeECDSA(t *testing.T) {
	for _, curve := range []string{"prime256v1", "secp384r1"} {
		t.Run(curve, func(t *testing.T) {
			key, err := Parse(openssl(t, "ecparam", "-genkey", "-name", curve, "-noout"), nil)
			if err != nil {
				t.Fatal(err)
			}
			k := key.(*ecdsa.PrivateKey)
			digest := sha256.Sum256([]byte("before wipe"))
			// Signing first puts the key in crypto/ecdsa's internal cache;
			// the wiped key must still refuse to sign afterwards.
			if _, err := k.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				t.Fatal(err)
			}
			//lint:ignore SA1019 the test has to look at the deprecated field Wipe clears.
			d := k.D //nolint:staticcheck // see lint:ignore above
			words := d.Bits()

			Wipe(k)

			if d.Sign() != 0 {
				t.Error("D is not zero")
			}
			if !allZero(words[:cap(words)]) {
				t.Error("backing words of D still hold data")
			}
			if _, err := k.Sign(rand.Reader, digest[:], crypto.SHA256); err == nil {
				t.Error("wiped ECDSA key still signs")
			}
		})
	}
}

// A big.Int that shrank keeps its old high words beyond len; wipeInt must
// reach them too.
func TestWipeIntSpareCapacity(t *testing.T) {
	b := new(big.Int).Lsh(big.NewInt(0x5a5a), 1000)
	b.SetInt64(7)
	w := b.Bits()
	if cap(w) <= len(w) || allZero(w[:cap(w)]) {
		t.Fatal("test setup: expected stale words in spare capacity")
	}
	wipeInt(b)
	if b.Sign() != 0 || !allZero(w[:cap(w)]) {
		t.Error("stale words survive wipeInt")
	}
}

func TestWipeIgnoresOthers(t *testing.T) {
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	Wipe(nil)
	Wipe((*rsa.PrivateKey)(nil))
	Wipe((*ecdsa.PrivateKey)(nil))
	Wipe(&rsa.PrivateKey{})
	Wipe(&ecdsa.PrivateKey{})
	Wipe(edKey)
}

func allZero[T comparable](s []T) bool {
	var zero T
	for _, v := range s {
		if v != zero {
			return false
		}
	}
	return true
}
