package auth

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// opensslControllerExt is the extension section docs/security.md gives for a
// controller's certificate; an MQTT client certificate of the same CA is the other.
const opensslControllerExt = `
[ controller_ext ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = 1.3.6.1.4.1.61046.1.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid

[ mqtt_client_ext ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth

[ ca ]
default_ca = controllers
[ controllers ]
database         = index.txt
crlnumber        = crlnumber
default_md       = sha256
default_crl_days = 7
`

// The recipe of docs/security.md, run with openssl: its controller certificate signs,
// an MQTT client certificate from the same CA does not, and its CRL revokes.
func TestOpenSSLIssuedController(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	ossl := func(args ...string) {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	os.WriteFile(filepath.Join(dir, "ext.cnf"), []byte(opensslControllerExt), 0o600)
	os.WriteFile(filepath.Join(dir, "index.txt"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "crlnumber"), []byte("01\n"), 0o600)
	ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
		"-subj", "/CN=Controllers CA", "-days", "30", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	for _, name := range []string{"controller", "mqtt_client"} {
		ossl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", name+".key",
			"-out", name+".csr", "-subj", "/CN="+name)
		ossl("x509", "-req", "-in", name+".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "30",
			"-extfile", "ext.cnf", "-extensions", name+"_ext", "-out", name+".pem")
	}
	bundle, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	v, err := NewVerifier(bundle)
	if err != nil {
		t.Fatal(err)
	}
	signed := func(name string) []byte {
		keyPEM, _ := os.ReadFile(filepath.Join(dir, name+".key"))
		certPEM, _ := os.ReadFile(filepath.Join(dir, name+".pem"))
		kb, _ := pem.Decode(keyPEM)
		cb, _ := pem.Decode(certPEM)
		key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(cb.Bytes)
		return signedBy(t, key.(crypto.Signer), cert)
	}
	if _, _, err := v.Verify(signed("controller"), "t"); err != nil {
		t.Fatalf("openssl-issued controller: %v", err)
	}
	if _, _, err := v.Verify(signed("mqtt_client"), "t"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("openssl-issued MQTT client certificate: %v", err)
	}
	ossl("ca", "-config", "ext.cnf", "-keyfile", "ca.key", "-cert", "ca.pem", "-revoke", "controller.pem")
	ossl("ca", "-config", "ext.cnf", "-keyfile", "ca.key", "-cert", "ca.pem", "-gencrl", "-out", "controllers.crl")
	crl, _ := os.ReadFile(filepath.Join(dir, "controllers.crl"))
	if err := v.LoadCRLs(crl); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Verify(signed("controller"), "t"); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked by openssl's CRL: %v", err)
	}
}
