package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"
)

type pki struct {
	ca     *x509.Certificate
	caKey  crypto.Signer
	bundle []byte
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return &pki{ca: ca, caKey: key, bundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// controller issues a controller's certificate: with the controller usage.
func (p *pki) controller(t *testing.T, key crypto.Signer, notAfter time.Time) *x509.Certificate {
	t.Helper()
	return p.issue(t, key, func(c *x509.Certificate) {
		c.NotAfter = notAfter
		c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{ControllerEKU}
	})
}

// issue makes a certificate for key under the PKI's CA, as edit shapes it.
func (p *pki) issue(t *testing.T, key crypto.Signer, edit func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "pki-controller"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	edit(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, key.Public(), p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// forge builds a compact JWS by hand, so tests can write headers no signer would.
func forge(t *testing.T, alg string, cert *x509.Certificate, payload []byte, sign func([]byte) []byte) []byte {
	t.Helper()
	h, _ := json.Marshal(map[string]any{"alg": alg, "x5c": []string{base64.StdEncoding.EncodeToString(cert.Raw)}})
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(payload)
	return []byte(input + "." + base64.RawURLEncoding.EncodeToString(sign([]byte(input))))
}

func TestVerify(t *testing.T) {
	trusted, other := newPKI(t, "controllers"), newPKI(t, "someone else")
	v, err := NewVerifier(trusted.bundle)
	if err != nil {
		t.Fatal(err)
	}
	payload := []byte(`{"id":"x1","args":{}}`)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := trusted.controller(t, key, time.Now().Add(time.Hour))

	good, err := Sign(payload, key, []*x509.Certificate{cert}, "")
	if err != nil {
		t.Fatal(err)
	}
	if !IsJWS(good) || IsJWS(payload) {
		t.Fatal("IsJWS")
	}
	got, who, err := v.Verify(good, "iot-hsm/dev/cmd/status")
	if err != nil || string(got) != string(payload) || !strings.Contains(who, "pki-controller") {
		t.Fatalf("good request: %q %q %v", got, who, err)
	}

	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaCert := trusted.controller(t, rsaKey, time.Now().Add(time.Hour))
	es256 := func(in []byte) []byte {
		d := sha256.Sum256(in)
		r, s, _ := ecdsa.Sign(rand.Reader, key, d[:])
		out := make([]byte, 64)
		r.FillBytes(out[:32])
		s.FillBytes(out[32:])
		return out
	}
	bad := map[string][]byte{
		"untrusted chain": func() []byte {
			b, _ := Sign(payload, key, []*x509.Certificate{other.controller(t, key, time.Now().Add(time.Hour))}, "")
			return b
		}(),
		"expired certificate": func() []byte {
			b, _ := Sign(payload, key, []*x509.Certificate{trusted.controller(t, key, time.Now().Add(-time.Minute))}, "")
			return b
		}(),
		"alg none":           forge(t, "none", cert, payload, func([]byte) []byte { return nil }),
		"alg HS256":          forge(t, "HS256", cert, payload, func([]byte) []byte { return []byte("mac") }),
		"alg/key mismatch":   forge(t, "ES256", rsaCert, payload, es256),
		"ES384 on a P-256":   forge(t, "ES384", cert, payload, es256),
		"no x5c":             []byte(strings.SplitN(string(forge(t, "ES256", cert, payload, es256)), ".", 2)[1] + ".x"),
		"bad signature":      []byte(string(good[:len(good)-4]) + "AAAA"),
		"plain JSON payload": payload,
	}
	if _, _, err := v.Verify(forge(t, "ES256", cert, payload, es256), "t"); err != nil {
		t.Fatalf("the hand-made JWS itself is sound: %v", err)
	}
	for name, msg := range bad {
		if _, _, err := v.Verify(msg, "t"); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: %v, want ErrUnauthorized", name, err)
		}
	}
}

// A request signed for one topic is refused on any other: republished to another
// appliance, or under another command, it does not run. Requiring the binding
// refuses unbound requests.
func TestVerifyTopicBinding(t *testing.T) {
	trusted := newPKI(t, "controllers")
	v, err := NewVerifier(trusted.bundle)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain := []*x509.Certificate{trusted.controller(t, key, time.Now().Add(time.Hour))}
	payload := []byte(`{"id":"b1","args":{"slot_id":"pkcs11-1/01"}}`)
	const topic = "iot-hsm/dev-a/cmd/slot.show"
	bound, err := Sign(payload, key, chain, topic)
	if err != nil {
		t.Fatal(err)
	}
	unbound, _ := Sign(payload, key, chain, "")

	if got, _, err := v.Verify(bound, topic); err != nil || string(got) != string(payload) {
		t.Fatalf("bound request on its topic: %q %v", got, err)
	}
	for _, other := range []string{"iot-hsm/dev-a/cmd/slot.clear", "iot-hsm/dev-b/cmd/slot.show", ""} {
		if _, _, err := v.Verify(bound, other); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("signed for %s, taken on %q: %v", topic, other, err)
		}
		if _, _, err := Unwrap(bound, other); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("without a bundle, signed for %s, taken on %q: %v", topic, other, err)
		}
	}
	if _, _, err := v.Verify(unbound, topic); err != nil {
		t.Errorf("an unbound request, binding not required: %v", err)
	}
	v.RequireTopic = true
	if _, _, err := v.Verify(unbound, topic); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), TopicHeader) {
		t.Errorf("an unbound request, binding required: %v", err)
	}
	if _, _, err := v.Verify(bound, topic); err != nil {
		t.Errorf("a bound request, binding required: %v", err)
	}
}

func TestUnwrapWithoutBundle(t *testing.T) {
	p := newPKI(t, "anyone")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := p.controller(t, key, time.Now().Add(time.Hour))
	payload := []byte(`{"id":"u1"}`)
	msg, _ := Sign(payload, key, []*x509.Certificate{cert}, "")
	got, who, err := Unwrap(msg, "t")
	if err != nil || string(got) != string(payload) || !strings.HasPrefix(who, "unverified: ") {
		t.Fatalf("%q %q %v", got, who, err)
	}
	if _, _, err := Unwrap([]byte(string(msg[:len(msg)-4])+"AAAA"), "t"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("bad signature: %v", err)
	}
	if string(PeekPayload(msg)) != string(payload) {
		t.Fatal("PeekPayload")
	}
}
