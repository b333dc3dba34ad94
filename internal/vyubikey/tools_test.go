package vyubikey_test

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-piv/piv-go/v2/piv"

	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey/pcscdtest"
)

const (
	opensc      = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
	defaultHex  = "010203040506070801020304050607080102030405060708"
	toolTimeout = 2 * time.Minute
)

// runTool runs a client program with a timeout and returns its combined output.
func runTool(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(toolTimeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s %q timed out: %s", name, args, out.String())
		return "", nil
	}
}

func needTool(t *testing.T, path string) {
	t.Helper()
	if _, err := exec.LookPath(path); err != nil {
		if _, err := os.Stat(path); err != nil {
			t.Skipf("%s not installed", path)
		}
	}
}

// testCA issues certificates for keys on the card.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vyubikey test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{key: k, cert: c}
}

func (ca *testCA) issue(t *testing.T, cn string, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readPEM(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	return blk.Bytes
}

// toMgmt3DES turns the card's default AES-192 management key into the 3DES key
// with the same bytes (`ykman piv access change-management-key -a TDES`):
// yubico-piv-tool 2.2.0 only speaks 3DES, and a real 5.7 key refuses its
// authentication (6A80) until then. It goes straight to the card (as another
// client on the reader would) and reselects PIV afterwards, which drops the
// authentication.
func toMgmt3DES(t *testing.T, c *vyubikey.Card) {
	t.Helper()
	tx := func(apdu []byte) []byte {
		r := c.HandleAPDU(apdu)
		if sw := r[len(r)-2:]; !bytes.Equal(sw, []byte{0x90, 0x00}) {
			t.Fatalf("apdu %x: status %x", apdu, sw)
		}
		return r[:len(r)-2]
	}
	tx(hexb("00A4040005A000000308"))
	block := aesBlock(t, piv.DefaultManagementKey)
	w := tx(hexb("00870A9B047C028000"))[4:]
	dec := make([]byte, 16)
	block.Decrypt(dec, w)
	chal := bytes.Repeat([]byte{0x11}, 16)
	data := append(append([]byte{0x7C, 0x24, 0x80, 0x10}, dec...), append([]byte{0x81, 0x10}, chal...)...)
	tx(append([]byte{0x00, 0x87, 0x0A, 0x9B, byte(len(data))}, data...))
	tx(append(hexb("00FFFFFF1B039B18"), piv.DefaultManagementKey...))
	tx(hexb("00A4040005A000000308"))
}

func aesBlock(t *testing.T, key []byte) cipher.Block {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hexb(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestYubicoPIVTool(t *testing.T) {
	needTool(t, "yubico-piv-tool")
	card := newCard(t, vyubikey.Config{Serial: 20260001})
	p := pcscdtest.PlugCard(t, card, testAddr())
	dir := t.TempDir()
	ypt := func(args ...string) (string, error) {
		return runTool(t, nil, "yubico-piv-tool", append([]string{"-r", p.Reader}, args...)...)
	}
	mustYPT := func(args ...string) string {
		t.Helper()
		out, err := ypt(args...)
		if err != nil {
			t.Fatalf("yubico-piv-tool %q: %v\n%s", args, err, out)
		}
		return out
	}

	out := mustYPT("-a", "status")
	for _, want := range []string{"Version:\t5.7.1", "Serial Number:\t20260001", "PIN tries left:\t3"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}

	// A 5.7 key's default management key is AES-192; yubico-piv-tool 2.2.0
	// authenticates with 3DES only and is refused, as by a real 5.7 key.
	pubPath := filepath.Join(dir, "pub.pem")
	if out, err := ypt("-k"+defaultHex, "-a", "generate", "-s", "9a", "-A", "ECCP256", "-o", pubPath); err == nil {
		t.Fatalf("generate with a 3DES key on a 5.7 AES-192 default succeeded:\n%s", out)
	} else if !strings.Contains(out, "Failed authentication") {
		t.Fatalf("generate: unexpected failure: %v\n%s", err, out)
	}
	toMgmt3DES(t, card)

	mustYPT("-k"+defaultHex, "-a", "generate", "-s", "9a", "-A", "ECCP256", "-o", pubPath)
	pub, err := x509.ParsePKIXPublicKey(readPEM(t, pubPath))
	if err != nil {
		t.Fatal(err)
	}
	mustYPT("-a", "verify-pin", "-P", "123456")

	// selfsign-certificate: yubico-piv-tool 2.2.0 built with OpenSSL 3 fails
	// before it sends the signing command (Yubico/yubico-piv-tool#388, the same
	// with a real YubiKey). Run it; if that is the failure, say so with the
	// trace and go on with a certificate issued by a test CA.
	certPath := filepath.Join(dir, "cert.pem")
	out, err = ypt("-v2", "-a", "verify-pin", "-P", "123456", "-a", "selfsign-certificate",
		"-s", "9a", "-S", "/CN=test/", "-i", pubPath, "-o", certPath)
	selfSigned := err == nil
	if err != nil {
		afterVerify := out[strings.Index(out, "Now processing for action 'selfsign-certificate'"):]
		if !strings.Contains(out, "Failed signing certificate.") || strings.Contains(afterVerify, "> 00 87") {
			t.Fatalf("selfsign-certificate: %v\n%s", err, out)
		}
		t.Logf("KNOWN CLIENT BUG: yubico-piv-tool 2.2.0 + OpenSSL 3 cannot sign with a card key "+
			"(Yubico/yubico-piv-tool#388); no GENERAL AUTHENTICATE was sent. Trace:\n%s", out)
		ca := newTestCA(t)
		cert := ca.issue(t, "test", pub)
		writePEM(t, certPath, "CERTIFICATE", cert.Raw)
	}
	mustYPT("-k"+defaultHex, "-a", "import-certificate", "-s", "9a", "-i", certPath)
	cert, err := x509.ParseCertificate(readPEM(t, certPath))
	if err != nil {
		t.Fatal(err)
	}
	if selfSigned {
		if err := cert.CheckSignatureFrom(cert); err != nil {
			t.Fatalf("self-signed certificate: %v", err)
		}
	}

	// attest: a certificate for the 9a key from the f9 key.
	attPath := filepath.Join(dir, "attest.pem")
	mustYPT("-a", "attest", "-s", "9a", "-o", attPath)
	att, err := x509.ParseCertificate(readPEM(t, attPath))
	if err != nil {
		t.Fatal(err)
	}
	if !att.PublicKey.(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("attested key is not the generated one")
	}
	yk, err := piv.Open(p.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f9, err := yk.AttestationCertificate()
	yk.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&piv.Verifier{Roots: rootPool(card)}).Verify(f9, att); err != nil {
		t.Fatal(err)
	}

	// status lists the certificate in 9a.
	out = mustYPT("-a", "status")
	if !regexp.MustCompile(`Slot 9a:\s*\n\s*Algorithm:\s*ECCP256\n\s*Subject DN:\s*CN=test`).MatchString(out) {
		t.Fatalf("status does not show the 9a certificate:\n%s", out)
	}
	// An empty slot cannot be attested.
	if out, err := ypt("-a", "attest", "-s", "9c"); err == nil {
		t.Fatalf("attest of an empty slot succeeded:\n%s", out)
	}
}

// openSCEnv isolates OpenSC from the user's configuration and file cache.
func openSCEnv(t *testing.T) []string {
	dir := t.TempDir()
	conf := filepath.Join(dir, "opensc.conf")
	if err := os.WriteFile(conf, []byte("app default {\n framework pkcs15 {\n  use_file_caching = no;\n }\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"OPENSC_CONF=" + conf, "HOME=" + dir}
}

func TestOpenSCPKCS11Sign(t *testing.T) {
	needTool(t, "pkcs11-tool")
	needTool(t, opensc)
	card := newCard(t, vyubikey.Config{})
	p := pcscdtest.PlugCard(t, card, testAddr())

	// Keys and certificates in 9a (P-256, PIN once) and 9c (RSA-2048, PIN
	// always), set up with piv-go; OpenSC finds keys through the certificates.
	ca := newTestCA(t)
	yk, err := piv.Open(p.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPub, err := yk.GenerateKey(defaultKey, piv.SlotAuthentication,
		piv.Key{Algorithm: piv.AlgorithmEC256, PINPolicy: piv.PINPolicyOnce, TouchPolicy: piv.TouchPolicyNever})
	if err != nil {
		t.Fatal(err)
	}
	if err := yk.SetCertificate(defaultKey, piv.SlotAuthentication, ca.issue(t, "opensc ec", ecPub)); err != nil {
		t.Fatal(err)
	}
	rsaPub, err := yk.GenerateKey(defaultKey, piv.SlotSignature,
		piv.Key{Algorithm: piv.AlgorithmRSA2048, PINPolicy: piv.PINPolicyAlways, TouchPolicy: piv.TouchPolicyNever})
	if err != nil {
		t.Fatal(err)
	}
	if err := yk.SetCertificate(defaultKey, piv.SlotSignature, ca.issue(t, "opensc rsa", rsaPub)); err != nil {
		t.Fatal(err)
	}
	yk.Close()

	env := openSCEnv(t)
	dir := t.TempDir()
	msg := []byte("signed through OpenSC's PKCS#11 module")
	digest := sha256.Sum256(msg)
	hashPath := filepath.Join(dir, "hash")
	msgPath := filepath.Join(dir, "msg")
	os.WriteFile(hashPath, digest[:], 0o600)
	os.WriteFile(msgPath, msg, 0o600)
	p11 := func(args ...string) string {
		t.Helper()
		out, err := runTool(t, env, "pkcs11-tool", append([]string{"--module", opensc}, args...)...)
		if err != nil {
			t.Fatalf("pkcs11-tool %q: %v\n%s", args, err, out)
		}
		return out
	}

	out := p11("--list-objects")
	for _, want := range []string{"opensc ec", "opensc rsa"} {
		if !strings.Contains(out, want) {
			t.Fatalf("objects lack %q:\n%s", want, out)
		}
	}

	// ECDSA on the digest with the 9a key (OpenSC id 01); raw r||s out.
	sigPath := filepath.Join(dir, "ec.sig")
	p11("--login", "--pin", "123456", "--sign", "--id", "01", "-m", "ECDSA", "--input-file", hashPath, "--output-file", sigPath)
	sig, _ := os.ReadFile(sigPath)
	if len(sig) != 64 {
		t.Fatalf("ECDSA signature of %d bytes", len(sig))
	}
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(ecPub.(*ecdsa.PublicKey), digest[:], r, s) {
		t.Fatal("OpenSC ECDSA signature does not verify")
	}
	// The same signature verifies with openssl.
	if _, err := exec.LookPath("openssl"); err == nil {
		der, _ := x509.MarshalPKIXPublicKey(ecPub)
		pubPath := filepath.Join(dir, "ec.pub.pem")
		writePEM(t, pubPath, "PUBLIC KEY", der)
		sigDER := filepath.Join(dir, "ec.sig.der")
		p11("--login", "--pin", "123456", "--sign", "--id", "01", "-m", "ECDSA", "--signature-format", "openssl",
			"--input-file", hashPath, "--output-file", sigDER)
		if out, err := runTool(t, nil, "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pubPath,
			"-in", hashPath, "-sigfile", sigDER); err != nil || !strings.Contains(out, "Signature Verified Successfully") {
			t.Fatalf("openssl pkeyutl -verify: %v\n%s", err, out)
		}
	}

	// RSA PKCS#1 v1.5 with SHA-256 on the 9c key (id 02): PIN "always", so
	// OpenSC logs in again (context specific) before signing.
	rsaSig := filepath.Join(dir, "rsa.sig")
	p11("--login", "--pin", "123456", "--sign", "--id", "02", "-m", "SHA256-RSA-PKCS", "--input-file", msgPath, "--output-file", rsaSig)
	sig, _ = os.ReadFile(rsaSig)
	if err := rsa.VerifyPKCS1v15(rsaPub.(*rsa.PublicKey), crypto.SHA256, digest[:], sig); err != nil {
		t.Fatalf("OpenSC RSA signature: %v", err)
	}

	// A wrong PIN is refused and counted.
	if out, err := runTool(t, env, "pkcs11-tool", "--module", opensc, "--login", "--pin", "999999", "--sign", "--id", "01",
		"-m", "ECDSA", "--input-file", hashPath, "--output-file", sigPath); err == nil {
		t.Fatalf("wrong PIN accepted:\n%s", out)
	}
	yk = open(t, p)
	if n, err := yk.Retries(); err != nil || n != 2 {
		t.Fatalf("Retries() after a wrong PIN through OpenSC = %d, %v", n, err)
	}
}
