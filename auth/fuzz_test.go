package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fuzz target for the JWS decoder. The PKI is built from fixed
// seeds with Ed25519 (deterministic signatures), so the valid JWS below is the
// same on every run and the one in testdata/fuzz/FuzzVerify verifies too.

var fuzzNow = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

const fuzzTopic = "iot-hsm/fz/cmd/sign"

const fuzzPayload = `{"id":"fz-1","expires_at":"2026-06-01T00:05:00Z","args":{"slot_id":"s1","kind":"digest","digest":"AAEC"}}`

// fuzzES256 is fuzzPayload signed by the ES256 controller (seed 4), whose
// certificate is deterministic.
const fuzzES256 = "eyJhbGciOiJFUzI1NiIsIng1YyI6WyJNSUlCY1RDQ0FTT2dBd0lCQWdJQkF6QUZCZ01yWlhBd0hqRWNNQm9HQTFVRUF4TVRablY2ZWlCamIyNTBjbTlzYkdWeWN5QkRRVEFlRncweU1EQXhNREV3TURBd01EQmFGdzAwTURBeE1ERXdNREF3TURCYU1CMHhHekFaQmdOVkJBTVRFbVoxZW5vdFkyOXVkSEp2Ykd4bGNpMWxZekJaTUJNR0J5cUdTTTQ5QWdFR0NDcUdTTTQ5QXdFSEEwSUFCSE1RUHNNTFBNOVgycTRJNlRVMHJ2RkVvMWxBejJ1N29Tb005OHZWMWxwazJDeU1tZW5UeEYrU1JicWJKNWdzbXVxT3dkdVVzWnhFZVZsQ3dPc2lxaktqV0RCV01BNEdBMVVkRHdFQi93UUVBd0lIZ0RBVkJnTlZIU1VFRGpBTUJnb3JCZ0VFQVlQY2RnRUJNQXdHQTFVZEV3RUIvd1FDTUFBd0h3WURWUjBqQkJnd0ZvQVVOSFVQbUwxWi9QeVViYVJhcXI2VE8rRlVwTFV3QlFZREsyVndBMEVBRXYrRHBZY1lvTGxWeVJkVEdaSG5zUWVMelNISVZ2bVd2TFhpenpHdXFwUmROUlpWdkFvTEZFWlhld2RGYmdMQWdYR1QvaFREZnBoNEdyN0NCbTZCQnc9PSJdfQ.eyJpZCI6ImZ6LTEiLCJleHBpcmVzX2F0IjoiMjAyNi0wNi0wMVQwMDowNTowMFoiLCJhcmdzIjp7InNsb3RfaWQiOiJzMSIsImtpbmQiOiJkaWdlc3QiLCJkaWdlc3QiOiJBQUVDIn19.-leT6IlhqTN5OKvgi15PT7iqI5nxcCZu5eJVUTcKacZArmIrlb_JNw-ZSLiFvZKQdQd_aJuwTcMqBIv_v78bQA"

type fuzzPKI struct {
	verifier *Verifier
	// valid are the JWS the trusted controllers made of fuzzPayload, by
	// algorithm: EdDSA (deterministic) and ES256 (fresh per run).
	valid map[string][]byte
	// untrusted is fuzzPayload correctly signed by a controller of another CA.
	untrusted []byte
	ecPub     *ecdsa.PublicKey
}

var fuzzSetup = sync.OnceValues(func() (*fuzzPKI, error) {
	seed := func(b byte) []byte { return bytes.Repeat([]byte{b}, ed25519.SeedSize) }
	caKey := ed25519.NewKeyFromSeed(seed(1))
	otherCAKey := ed25519.NewKeyFromSeed(seed(2))
	edKey := ed25519.NewKeyFromSeed(seed(3))
	ecKey, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), seed(4))
	if err != nil {
		return nil, err
	}
	mk := func(serial int64, cn string, isCA bool, pub crypto.PublicKey, parent *x509.Certificate, signer crypto.Signer) (*x509.Certificate, error) {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC),
			BasicConstraintsValid: true, IsCA: isCA, KeyUsage: x509.KeyUsageDigitalSignature}
		if isCA {
			tmpl.KeyUsage |= x509.KeyUsageCertSign
		} else {
			tmpl.UnknownExtKeyUsage = []asn1.ObjectIdentifier{ControllerEKU}
		}
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			return nil, err
		}
		return x509.ParseCertificate(der)
	}
	ca, err := mk(1, "fuzz controllers CA", true, caKey.Public(), nil, caKey)
	if err != nil {
		return nil, err
	}
	otherCA, err := mk(1, "fuzz controllers CA", true, otherCAKey.Public(), nil, otherCAKey)
	if err != nil {
		return nil, err
	}
	edCert, err := mk(2, "fuzz-controller-ed", false, edKey.Public(), ca, caKey)
	if err != nil {
		return nil, err
	}
	ecCert, err := mk(3, "fuzz-controller-ec", false, ecKey.Public(), ca, caKey)
	if err != nil {
		return nil, err
	}
	rogueCert, err := mk(2, "fuzz-controller-ed", false, edKey.Public(), otherCA, otherCAKey)
	if err != nil {
		return nil, err
	}
	v, err := NewVerifier(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}))
	if err != nil {
		return nil, err
	}
	v.Now = func() time.Time { return fuzzNow }
	p := &fuzzPKI{verifier: v, valid: map[string][]byte{}, ecPub: &ecKey.PublicKey}
	if p.valid["EdDSA"], err = Sign([]byte(fuzzPayload), edKey, []*x509.Certificate{edCert, ca}, ""); err != nil {
		return nil, err
	}
	// ECDSA signatures are randomised, and fuzz workers are separate
	// processes, so the ES256 message is fixed here (made once with Sign by
	// ecKey over ecCert); it must still verify.
	p.valid["ES256"] = []byte(fuzzES256)
	if _, _, err := v.Verify(p.valid["ES256"], fuzzTopic); err != nil {
		return nil, fmt.Errorf("the fixed ES256 JWS: %w", err)
	}
	_ = ecCert
	if p.untrusted, err = Sign([]byte(fuzzPayload), edKey, []*x509.Certificate{rogueCert}, ""); err != nil {
		return nil, err
	}
	return p, nil
})

func fuzzPKIFor(t testing.TB) *fuzzPKI {
	p, err := fuzzSetup()
	if err != nil {
		t.Fatalf("fuzz PKI: %v", err)
	}
	return p
}

// jwsParts decodes the three segments of a compact JWS as go-jose does
// (unpadded base64url), nil when it cannot.
func jwsParts(compact []byte) (header, payload, sig []byte) {
	parts := strings.Split(string(bytes.TrimSpace(compact)), ".")
	if len(parts) != 3 {
		return nil, nil, nil
	}
	dec := func(s string) []byte {
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
		if err != nil {
			return nil
		}
		return b
	}
	return dec(parts[0]), dec(parts[1]), dec(parts[2])
}

// sameSignature reports whether sig is orig or, for ES256, orig's (r, n-s)
// twin: ECDSA signatures are malleable, that is no forgery.
func (p *fuzzPKI) sameSignature(alg string, sig, orig []byte) bool {
	if bytes.Equal(sig, orig) {
		return true
	}
	if alg != "ES256" || len(sig) != 64 || len(orig) != 64 {
		return false
	}
	n := p.ecPub.Curve.Params().N
	s := new(big.Int).SetBytes(orig[32:])
	twin := append(append([]byte{}, orig[:32]...), new(big.Int).Sub(n, s).FillBytes(make([]byte, 32))...)
	return bytes.Equal(sig, twin)
}

// FuzzVerify: Verify never accepts a message the trusted controllers did not
// sign. Starting from valid JWS, an accepted message must carry the original
// payload, protected header and signature (re-encoded spellings of the same
// bytes allowed); every refusal is ErrUnauthorized. Unwrap, PeekPayload and
// IsJWS must not panic, and Unwrap must accept whatever Verify accepts.
func FuzzVerify(f *testing.F) {
	p := fuzzPKIFor(f)
	f.Add(p.valid["EdDSA"])
	f.Add(p.valid["ES256"])
	f.Add(p.untrusted)
	f.Add([]byte(" \n" + string(p.valid["EdDSA"]) + "\n"))
	f.Add([]byte(fuzzPayload))
	f.Add([]byte(`eyJhbGciOiJub25lIn0.eyJpZCI6ImEifQ.`))
	f.Add([]byte(`..`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		p := fuzzPKIFor(t)
		IsJWS(msg)
		PeekPayload(msg)
		uPayload, uWho, uErr := Unwrap(msg, fuzzTopic)
		if uErr != nil && !errors.Is(uErr, ErrUnauthorized) {
			t.Fatalf("Unwrap refusal is not ErrUnauthorized: %v", uErr)
		}
		if uErr == nil && !strings.HasPrefix(uWho, "unverified: ") {
			t.Fatalf("Unwrap requester %q is not marked unverified", uWho)
		}

		payload, who, err := p.verifier.Verify(msg, fuzzTopic)
		if err != nil {
			if !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("Verify refusal is not ErrUnauthorized: %v", err)
			}
			if payload != nil || who != "" {
				t.Fatalf("Verify refused but returned payload %q, requester %q", payload, who)
			}
			return
		}
		if string(payload) != fuzzPayload {
			t.Fatalf("Verify accepted a payload that was never signed: %q", payload)
		}
		if !strings.HasPrefix(who, "CN=fuzz-controller-") {
			t.Fatalf("Verify accepted with requester %q", who)
		}
		h, pl, sig := jwsParts(msg)
		if string(pl) != fuzzPayload {
			t.Fatalf("accepted message's payload segment decodes to %q", pl)
		}
		var hdr struct {
			Alg string `json:"alg"`
		}
		if json.Unmarshal(h, &hdr) != nil {
			t.Fatalf("accepted message's header segment is not JSON: %q", h)
		}
		orig, ok := p.valid[hdr.Alg]
		if !ok {
			t.Fatalf("accepted a message with alg %q, none was signed so", hdr.Alg)
		}
		oh, _, osig := jwsParts(orig)
		if !bytes.Equal(h, oh) {
			t.Fatalf("accepted a modified protected header:\n got %q\nwant %q", h, oh)
		}
		if !p.sameSignature(hdr.Alg, sig, osig) {
			t.Fatalf("accepted a signature that is not the original one: %x", sig)
		}
		if uErr != nil || !bytes.Equal(uPayload, payload) {
			t.Fatalf("Verify accepted what Unwrap refuses: %q %v", uPayload, uErr)
		}
	})
}
