package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/pkcs11"
	"go.step.sm/crypto/x509util"

	"github.com/iot-hsm/iot-hsm/internal/softhsm"
)

// stepCAVersion is the step-ca the peer rows run; make bench installs it with go
// install into bin/step-ca-<version>/ (the Go module proxy serves it).
const stepCAVersion = "v0.30.2"

// stepCAKey is the intermediate's key in the peer's SoftHSM2 token, as ca.json names it.
const stepCAKey = "pkcs11:id=7331;object=intermediate"

// stepCA is smallstep's step-ca set up as a user would run it beside an HSM: its
// intermediate key in a SoftHSM2 token of its own (PKCS#11), a root made offline, and
// a JWK provisioner whose one-time tokens the load client makes ahead of time.
type stepCA struct {
	bin, dir string
	tok      *softhsm.Token
	roots    *x509.CertPool
	jwk      *jose.JSONWebKey // the provisioner's private key
	prov     map[string]any   // its entry in ca.json
}

const stepCAProvisioner = "bench"

// setupStepCA makes the peer's token, key, PKI and provisioner. It sets
// SOFTHSM2_CONF for as long as it talks to the token, so it runs before this
// process opens the appliance's token.
func setupStepCA(bin, dir string) (*stepCA, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("step-ca %s is not installed (make bench installs it): %w", stepCAVersion, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	tok, err := softhsm.Create(filepath.Join(dir, "token"), "stepca")
	if err != nil {
		return nil, err
	}
	s := &stepCA{bin: bin, dir: dir, tok: tok}
	inter, err := s.hsmKey()
	if err != nil {
		return nil, err
	}
	if err := s.pki(inter); err != nil {
		return nil, err
	}
	return s, s.provisioner()
}

// kmsURI is how step-ca (and go.step.sm/crypto's kms) reaches the token.
func (s *stepCA) kmsURI() string {
	return "pkcs11:module-path=" + s.tok.Module + ";token=" + s.tok.Label + "?pin-value=" + s.tok.PIN
}

// hsmKey generates the intermediate's P-256 key on the token and returns its public key.
func (s *stepCA) hsmKey() (*ecdsa.PublicKey, error) {
	prev, had := os.LookupEnv("SOFTHSM2_CONF")
	os.Setenv("SOFTHSM2_CONF", s.tok.Conf)
	defer func() {
		if had {
			os.Setenv("SOFTHSM2_CONF", prev)
		} else {
			os.Unsetenv("SOFTHSM2_CONF")
		}
	}()
	k, err := pkcs11.New(context.Background(), apiv1.Options{Type: apiv1.PKCS11, URI: s.kmsURI()})
	if err != nil {
		return nil, fmt.Errorf("step-ca token: %w", err)
	}
	defer k.Close()
	resp, err := k.CreateKey(&apiv1.CreateKeyRequest{Name: stepCAKey, SignatureAlgorithm: apiv1.ECDSAWithSHA256})
	if err != nil {
		return nil, fmt.Errorf("step-ca token: %w", err)
	}
	pub, ok := resp.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("step-ca token: the key is not ECDSA")
	}
	return pub, nil
}

// pki makes an offline root (a software key, as `step ca init` would make it) and
// the intermediate certificate over the token's key, and writes both.
func (s *stepCA) pki(interPub *ecdsa.PublicKey) error {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now().Add(-time.Minute)
	rootTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "Bench step-ca Root CA"}, NotBefore: now,
		NotAfter: now.Add(10 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	root, err := x509util.CreateCertificate(rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return fmt.Errorf("step-ca root: %w", err)
	}
	interTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "Bench step-ca Intermediate CA"}, NotBefore: now,
		NotAfter: now.Add(5 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, MaxPathLen: 0, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	inter, err := x509util.CreateCertificate(interTmpl, root, interPub, rootKey)
	if err != nil {
		return fmt.Errorf("step-ca intermediate: %w", err)
	}
	s.roots = x509.NewCertPool()
	s.roots.AddCert(root)
	for name, c := range map[string]*x509.Certificate{"root_ca.crt": root, "intermediate_ca.crt": inter} {
		data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		if err := os.WriteFile(filepath.Join(s.dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// provisioner makes the JWK provisioner: the public key in ca.json with the private
// key encrypted beside it, as step-ca expects; the private key stays in memory for
// the one-time tokens.
func (s *stepCA) provisioner() error {
	jwk, err := jose.GenerateJWK("EC", "P-256", jose.ES256, "sig", "", 0)
	if err != nil {
		return err
	}
	if jwk.KeyID, err = jose.Thumbprint(jwk); err != nil {
		return err
	}
	enc, err := jose.EncryptJWK(jwk, []byte(randomHex(16)))
	if err != nil {
		return err
	}
	encrypted, err := enc.CompactSerialize()
	if err != nil {
		return err
	}
	pub := jwk.Public()
	s.jwk = jwk
	s.prov = map[string]any{"type": "JWK", "name": stepCAProvisioner, "key": &pub, "encryptedKey": encrypted}
	return nil
}

// config writes ca.json for one start: a fresh badger database (step-ca's default,
// durable like our reply cache) and the address to listen on.
func (s *stepCA) config(addr, dbDir string) (string, error) {
	cfg := map[string]any{
		"root": filepath.Join(s.dir, "root_ca.crt"), "crt": filepath.Join(s.dir, "intermediate_ca.crt"),
		"key": stepCAKey, "kms": map[string]any{"type": "pkcs11", "uri": s.kmsURI()},
		"address": addr, "dnsNames": []string{"127.0.0.1"},
		"logger": map[string]any{"format": "text"},
		"db":     map[string]any{"type": "badgerv2", "dataSource": dbDir},
		"authority": map[string]any{
			"provisioners": []any{s.prov},
			"claims":       map[string]any{"maxTLSCertDuration": "720h", "defaultTLSCertDuration": "720h"},
		},
		"tls": map[string]any{"minVersion": 1.2, "maxVersion": 1.3, "renegotiation": false},
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(s.dir, "ca.json")
	return path, os.WriteFile(path, b, 0o600)
}

// freeAddr is a loopback address with a port nothing listens on.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
