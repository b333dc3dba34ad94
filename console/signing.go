package console

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"slices"

	"github.com/iot-hsm/iot-hsm/auth"
)

// signRequest wraps the request in a compact JWS when --sign-key is given: appliances
// configured with trust.controllers execute only signed requests. The signature
// covers the topic too, so the request cannot be published again elsewhere.
func (s *session) signRequest(payload []byte, topic string) ([]byte, error) {
	if s.opts.signKey == "" && s.opts.signCert == "" {
		return payload, nil
	}
	if s.opts.signKey == "" || s.opts.signCert == "" {
		return nil, usagef("--sign-key and --sign-cert go together")
	}
	keyPEM, err := os.ReadFile(s.opts.signKey)
	if err != nil {
		return nil, usagef("--sign-key: %v", err)
	}
	key, err := parseSigningKey(keyPEM)
	if err != nil {
		return nil, usagef("--sign-key: %v", err)
	}
	certPEM, err := os.ReadFile(s.opts.signCert)
	if err != nil {
		return nil, usagef("--sign-cert: %v", err)
	}
	var chain []*x509.Certificate
	for b, rest := pem.Decode(certPEM); b != nil; b, rest = pem.Decode(rest) {
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			chain = append(chain, c)
		}
	}
	if len(chain) == 0 {
		return nil, usagef("--sign-cert: no PEM certificate")
	}
	if !slices.ContainsFunc(chain[0].UnknownExtKeyUsage, auth.ControllerEKU.Equal) && s.stderr != nil {
		// Only a warning: an appliance without [trust] controllers takes it.
		fmt.Fprintf(s.stderr, "console: warning: --sign-cert lacks the iot-hsm controller extended key usage %s; appliances with [trust] controllers refuse its requests\n", auth.ControllerEKU)
	}
	out, err := auth.Sign(payload, key, chain, topic)
	if err != nil {
		return nil, usagef("signing the request: %v", err)
	}
	return out, nil
}

// parseSigningKey reads a PKCS#8, SEC1 or PKCS#1 private key (Ed25519 included).
func parseSigningKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errNoKey
	}
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
	}
	if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	return nil, errNoKey
}

var errNoKey = usagef("not an unencrypted PEM private key")
