package console

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/auth"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// The console signs with whatever certificate it is given, but says so when the
// certificate lacks the controller usage: appliances with a controllers bundle would
// refuse it, and the operator should learn why before the reply says unauthorized.
func TestSigningCertificateUsage(t *testing.T) {
	clearEnv(t)
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "controllers"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	v, err := auth.NewVerifier(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(dir, "key.pem")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	certFile := func(name string, eku []x509.ExtKeyUsage, unknown []asn1.ObjectIdentifier) string {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: eku, UnknownExtKeyUsage: unknown}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, name+".pem")
		os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
		return f
	}
	url := startBroker(t)
	got := fakeDevice(t, url, func(cmd string, req protocol.Request) [][]byte {
		return [][]byte{okReply(req.ID, cmd, protocol.Status{Device: "dev1"})}
	}, "iot-hsm/dev1/cmd/+")

	for _, c := range []struct {
		cert     string
		accepted bool
	}{
		{certFile("controller", nil, []asn1.ObjectIdentifier{auth.ControllerEKU}), true},
		{certFile("mqtt-client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil), false},
	} {
		code, _, stderr := run(t, "", "--broker", url, "--device", "dev1", "--sign-key", keyFile, "--sign-cert", c.cert, "status")
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", c.cert, code, stderr)
		}
		warned := strings.Contains(stderr, "lacks the iot-hsm controller extended key usage "+auth.ControllerEKU.String())
		if warned == c.accepted {
			t.Errorf("%s: warned %v, stderr %q", c.cert, warned, stderr)
		}
		r := next(t, got)
		_, _, err := v.Verify(r.raw, r.topic)
		if (err == nil) != c.accepted {
			t.Errorf("%s: an appliance's verifier says %v", c.cert, err)
		}
	}
}
