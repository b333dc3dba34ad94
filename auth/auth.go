// Package auth checks authenticated requests: compact JWS (RFC 7515) whose x5c
// certificate chain leads to the controllers' CA bundle, from a certificate made for
// it (ControllerEKU) that its issuer's CRL does not revoke. With such a bundle
// configured, a party that can merely publish to the broker cannot sign or provision
// anything; with requests bound to their topic (TopicHeader) it cannot replay them
// to another appliance's command topics or under another command either. A CA topic
// is shared by every appliance holding that CA's key: a signed sign request
// published there again can reach a member that has not seen its id.
package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// ErrUnauthorized is a request that is not signed by a trusted controller.
var ErrUnauthorized = errors.New("unauthorized")

// Algorithms the protocol allows. "none" and HMAC are not among them, so go-jose
// refuses them while parsing.
var Algorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.EdDSA, jose.PS256, jose.RS256}

// TopicHeader is the protected JWS header that binds a signed request to the MQTT
// topic it is published to. The payload alone does not say which device or command
// it is for (the topic does), so without it a signed request could be published
// again to another appliance, or under another command whose arguments fit.
const TopicHeader = "topic"

// Verifier checks requests against a CA bundle and, optionally, its CAs' CRLs. It is
// not changed once in use: a new configuration makes a new one.
type Verifier struct {
	roots *x509.CertPool
	cas   []*x509.Certificate
	crls  map[string]*crl // by caID of the issuing CA
	Now   func() time.Time
	// RequireTopic refuses signed requests without the topic header. Controllers
	// written to the protocol's first version do not send it, so requiring it is a
	// choice of the operator.
	RequireTopic bool
}

// NewVerifier takes the controllers' CA bundle (PEM). A request is then taken only
// from a certificate with ControllerEKU that chains to it.
func NewVerifier(bundlePEM []byte) (*Verifier, error) {
	cas, err := parseBundle(bundlePEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	return &Verifier{roots: pool, cas: cas, Now: time.Now}, nil
}

// IsJWS reports whether a message looks like a compact JWS rather than JSON.
func IsJWS(payload []byte) bool {
	p := bytes.TrimSpace(payload)
	return len(p) > 0 && p[0] != '{' && bytes.Count(p, []byte{'.'}) == 2
}

// Verify checks a compact JWS that arrived on topic and returns its payload and the
// requester: the subject of the certificate that signed it.
func (v *Verifier) Verify(compact []byte, topic string) (payload []byte, requester string, err error) {
	jws, err := jose.ParseSignedCompact(string(bytes.TrimSpace(compact)), Algorithms)
	if err != nil {
		return nil, "", fmt.Errorf("%w: not a JWS with an allowed algorithm (ES256, ES384, EdDSA, PS256, RS256)", ErrUnauthorized)
	}
	if len(jws.Signatures) != 1 {
		return nil, "", fmt.Errorf("%w: want exactly one signature", ErrUnauthorized)
	}
	h := jws.Signatures[0].Protected
	now := v.Now()
	// ExtKeyUsageAny here, because x509.Verify cannot be asked for a private usage;
	// checkController then requires ControllerEKU as Verify would.
	chains, err := h.Certificates(x509.VerifyOptions{
		Roots:       v.roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, "", fmt.Errorf("%w: the x5c chain does not lead to a trusted controller CA: %v", ErrUnauthorized, err)
	}
	if err := v.checkController(chains, now); err != nil {
		return nil, "", err
	}
	leaf := chains[0][0]
	if err := algorithmFits(jose.SignatureAlgorithm(h.Algorithm), leaf.PublicKey); err != nil {
		return nil, "", err
	}
	payload, err = jws.Verify(leaf.PublicKey)
	if err != nil {
		return nil, "", fmt.Errorf("%w: bad signature", ErrUnauthorized)
	}
	if err := checkTopic(h, topic, v.RequireTopic); err != nil {
		return nil, "", err
	}
	return payload, leaf.Subject.String(), nil
}

// checkTopic: a request signed for a topic is taken only on that topic.
func checkTopic(h jose.Header, topic string, required bool) error {
	raw, ok := h.ExtraHeaders[jose.HeaderKey(TopicHeader)]
	if !ok {
		if required {
			return fmt.Errorf("%w: the request is not bound to its topic (protected header %q), and this appliance requires it", ErrUnauthorized, TopicHeader)
		}
		return nil
	}
	signed, ok := raw.(string)
	if !ok || signed != topic {
		return fmt.Errorf("%w: the request was signed for another topic than the one it arrived on", ErrUnauthorized)
	}
	return nil
}

// algorithmFits refuses an alg header that does not match the certificate's key: an
// RSA key must not be accepted under an EC algorithm name, or the reverse.
func algorithmFits(alg jose.SignatureAlgorithm, pub crypto.PublicKey) error {
	ok := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		ok = alg == jose.ES256 && k.Curve.Params().BitSize == 256 || alg == jose.ES384 && k.Curve.Params().BitSize == 384
	case ed25519.PublicKey:
		ok = alg == jose.EdDSA
	case *rsa.PublicKey:
		ok = alg == jose.PS256 || alg == jose.RS256
	}
	if !ok {
		return fmt.Errorf("%w: algorithm %s does not fit the certificate's %T key", ErrUnauthorized, alg, pub)
	}
	return nil
}

// Sign makes a compact JWS of payload with key, carrying chain (leaf first) in x5c,
// bound to topic when it is not empty. The console uses it to send authenticated
// requests.
func Sign(payload []byte, key crypto.Signer, chain []*x509.Certificate, topic string) ([]byte, error) {
	var alg jose.SignatureAlgorithm
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve.Params().BitSize {
		case 256:
			alg = jose.ES256
		case 384:
			alg = jose.ES384
		}
	case ed25519.PublicKey:
		alg = jose.EdDSA
	case *rsa.PublicKey:
		alg = jose.PS256
	}
	if alg == "" {
		return nil, fmt.Errorf("auth: no JWS algorithm for a %T key", key.Public())
	}
	x5c := make([]string, len(chain))
	for i, c := range chain {
		x5c[i] = base64.StdEncoding.EncodeToString(c.Raw)
	}
	opts := (&jose.SignerOptions{}).WithHeader("x5c", x5c)
	if topic != "" {
		opts = opts.WithHeader(TopicHeader, topic)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		return nil, err
	}
	jws, err := s.Sign(payload)
	if err != nil {
		return nil, err
	}
	out, err := jws.CompactSerialize()
	return []byte(out), err
}

// Unwrap takes the payload of a JWS whose signature is only checked against the key
// of its own x5c certificate: for appliances that have no controllers bundle, so a
// PKI that always signs is still served. The requester is marked unverified. A topic
// header, when there is one, must still name topic.
func Unwrap(compact []byte, topic string) (payload []byte, requester string, err error) {
	jws, err := jose.ParseSignedCompact(string(bytes.TrimSpace(compact)), Algorithms)
	if err != nil || len(jws.Signatures) != 1 {
		return nil, "", fmt.Errorf("%w: not a JWS with an allowed algorithm", ErrUnauthorized)
	}
	leaf, err := x5cLeaf(compact)
	if err != nil {
		return nil, "", err
	}
	if err := algorithmFits(jose.SignatureAlgorithm(jws.Signatures[0].Protected.Algorithm), leaf.PublicKey); err != nil {
		return nil, "", err
	}
	if payload, err = jws.Verify(leaf.PublicKey); err != nil {
		return nil, "", fmt.Errorf("%w: bad signature", ErrUnauthorized)
	}
	if err := checkTopic(jws.Signatures[0].Protected, topic, false); err != nil {
		return nil, "", err
	}
	return payload, "unverified: " + leaf.Subject.String(), nil
}

// x5cLeaf reads the first x5c certificate from the protected header.
func x5cLeaf(compact []byte) (*x509.Certificate, error) {
	head, _, _ := bytes.Cut(bytes.TrimSpace(compact), []byte{'.'})
	raw, err := base64.RawURLEncoding.DecodeString(string(head))
	if err != nil {
		return nil, fmt.Errorf("%w: bad JWS header", ErrUnauthorized)
	}
	var h struct {
		X5C []string `json:"x5c"`
	}
	if json.Unmarshal(raw, &h) != nil || len(h.X5C) == 0 {
		return nil, fmt.Errorf("%w: no x5c certificate", ErrUnauthorized)
	}
	der, err := base64.StdEncoding.DecodeString(h.X5C[0])
	if err != nil {
		return nil, fmt.Errorf("%w: bad x5c certificate", ErrUnauthorized)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: bad x5c certificate", ErrUnauthorized)
	}
	return c, nil
}

// PeekPayload returns the payload of a JWS without checking anything, only to address
// the refusal of a request that did not authenticate. It is never executed.
func PeekPayload(compact []byte) []byte {
	parts := bytes.Split(bytes.TrimSpace(compact), []byte{'.'})
	if len(parts) != 3 {
		return nil
	}
	out, err := base64.RawURLEncoding.DecodeString(string(parts[1]))
	if err != nil {
		return nil
	}
	return out
}
