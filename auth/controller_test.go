package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"
)

func newKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// intermediate issues a sub-CA under p, as edit shapes it.
func (p *pki) intermediate(t *testing.T, edit func(*x509.Certificate)) *pki {
	t.Helper()
	key := newKey(t)
	c := p.issue(t, key, func(c *x509.Certificate) {
		c.Subject = pkix.Name{CommonName: "controllers intermediate"}
		c.IsCA, c.BasicConstraintsValid = true, true
		c.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		edit(c)
	})
	return &pki{ca: c, caKey: key}
}

// crl is a PEM CRL of p's CA revoking serials, valid until nextUpdate.
func (p *pki) crl(t *testing.T, nextUpdate time.Time, serials ...*big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: nextUpdate}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, p.ca, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

func signedBy(t *testing.T, key crypto.Signer, chain ...*x509.Certificate) []byte {
	t.Helper()
	msg, err := Sign([]byte(`{"id":"c1"}`), key, chain, "t")
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// A certificate from the controllers' CA is not enough: an appliance's MQTT client
// certificate from the same CA must not sign commands. Only the controller usage
// does, and a sub-CA that restricts its usages must allow it.
func TestControllerUsage(t *testing.T) {
	trusted := newPKI(t, "controllers and broker clients")
	v, err := NewVerifier(trusted.bundle)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	eku := func(usages ...x509.ExtKeyUsage) func(*x509.Certificate) {
		return func(c *x509.Certificate) { c.ExtKeyUsage = usages }
	}
	controller := func(c *x509.Certificate) {
		c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{ControllerEKU}
	}
	refused := map[string][]byte{
		"clientAuth only": signedBy(t, key, trusted.issue(t, key, eku(x509.ExtKeyUsageClientAuth))),
		"serverAuth and clientAuth": signedBy(t, key, trusted.issue(t, key,
			eku(x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth))),
		"no extended key usage":    signedBy(t, key, trusted.issue(t, key, eku())),
		"anyExtendedKeyUsage only": signedBy(t, key, trusted.issue(t, key, eku(x509.ExtKeyUsageAny))),
		"another private usage only": signedBy(t, key, trusted.issue(t, key, func(c *x509.Certificate) {
			c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 3, 6, 1, 4, 1, 99999, 1}}
		})),
	}
	for name, msg := range refused {
		_, _, err := v.Verify(msg, "t")
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), ControllerEKU.String()) {
			t.Errorf("%s: %v, want ErrUnauthorized naming %s", name, err, ControllerEKU)
		}
	}

	both := trusted.issue(t, key, func(c *x509.Certificate) {
		controller(c)
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	for name, chain := range map[string][]*x509.Certificate{
		"controller usage":                {trusted.controller(t, key, time.Now().Add(time.Hour))},
		"controller usage and clientAuth": {both},
	} {
		if _, who, err := v.Verify(signedBy(t, key, chain...), "t"); err != nil || !strings.Contains(who, "pki-controller") {
			t.Errorf("%s: %q %v", name, who, err)
		}
	}

	// Intermediates: no usages, anyExtendedKeyUsage or the controller usage pass on a
	// controller leaf; one limited to TLS does not.
	for name, c := range map[string]struct {
		edit func(*x509.Certificate)
		ok   bool
	}{
		"intermediate without usages":     {eku(), true},
		"intermediate with any usage":     {eku(x509.ExtKeyUsageAny), true},
		"intermediate for controllers":    {controller, true},
		"intermediate for TLS clients":    {eku(x509.ExtKeyUsageClientAuth), false},
		"intermediate for TLS and others": {eku(x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth), false},
	} {
		sub := c.edit
		inter := trusted.intermediate(t, sub)
		leaf := inter.controller(t, key, time.Now().Add(time.Hour))
		_, _, err := v.Verify(signedBy(t, key, leaf, inter.ca), "t")
		if c.ok && err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if !c.ok && (!errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "controllers intermediate")) {
			t.Errorf("%s: %v, want ErrUnauthorized naming the intermediate", name, err)
		}
	}
}

// The controllers CRL: a revoked controller or intermediate is refused, the others
// pass; an expired CRL refuses everything its CA issued, and says so.
func TestControllerCRL(t *testing.T) {
	trusted := newPKI(t, "controllers")
	key := newKey(t)
	good := trusted.controller(t, key, time.Now().Add(time.Hour))
	revoked := trusted.controller(t, key, time.Now().Add(time.Hour))
	inter := trusted.intermediate(t, func(*x509.Certificate) {})
	underRevokedInter := inter.controller(t, key, time.Now().Add(time.Hour))

	v, err := NewVerifier(trusted.bundle)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.LoadCRLs(trusted.crl(t, time.Now().Add(time.Hour), revoked.SerialNumber, inter.ca.SerialNumber)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Verify(signedBy(t, key, good), "t"); err != nil {
		t.Fatalf("a controller not on the CRL: %v", err)
	}
	for name, msg := range map[string][]byte{
		"revoked controller":         signedBy(t, key, revoked),
		"under revoked intermediate": signedBy(t, key, underRevokedInter, inter.ca),
	} {
		if _, _, err := v.Verify(msg, "t"); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "revoked") {
			t.Errorf("%s: %v, want ErrUnauthorized, revoked", name, err)
		}
	}
	if stale := v.StaleCRLs(time.Now()); len(stale) != 0 {
		t.Errorf("a current CRL reported stale: %v", stale)
	}

	// Past nextUpdate: it loads (the appliance still starts) but fails closed, naming
	// the CRL and the clock.
	x, _ := NewVerifier(trusted.bundle)
	if err := x.LoadCRLs(trusted.crl(t, time.Now().Add(-time.Minute))); err != nil {
		t.Fatalf("an expired CRL does not load: %v", err)
	}
	if _, _, err := x.Verify(signedBy(t, key, good), "t"); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "CRL of CN=controllers expired") {
		t.Errorf("with an expired CRL: %v, want ErrUnauthorized naming the expired CRL", err)
	}
	if stale := x.StaleCRLs(time.Now()); len(stale) != 1 || !strings.Contains(stale[0], "CN=controllers") {
		t.Errorf("stale CRLs %v", stale)
	}

	// DER is taken as well as PEM.
	der, _ := pem.Decode(trusted.crl(t, time.Now().Add(time.Hour), revoked.SerialNumber))
	w, _ := NewVerifier(trusted.bundle)
	if err := w.LoadCRLs(der.Bytes); err != nil {
		t.Fatalf("DER CRL: %v", err)
	}
	if _, _, err := w.Verify(signedBy(t, key, revoked), "t"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("revoked by a DER CRL: %v", err)
	}
}

// A CRL that is not the bundle CAs' own is refused at load, with a reason, and the
// verifier keeps what it had.
func TestControllerCRLRefused(t *testing.T) {
	trusted, stranger := newPKI(t, "controllers"), newPKI(t, "someone else")
	impostor := newPKI(t, "controllers") // the same name, another key
	key := newKey(t)
	revoked := trusted.controller(t, key, time.Now().Add(time.Hour))
	v, err := NewVerifier(trusted.bundle)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.LoadCRLs(trusted.crl(t, time.Now().Add(time.Hour), revoked.SerialNumber)); err != nil {
		t.Fatal(err)
	}
	current := trusted.crl(t, time.Now().Add(time.Hour))
	for name, c := range map[string]struct {
		data []byte
		want string
	}{
		"signed by a stranger":            {stranger.crl(t, time.Now().Add(time.Hour)), "not issued by a CA of the controllers bundle"},
		"a bundle CA's name, another key": {impostor.crl(t, time.Now().Add(time.Hour)), "not signed by that CA"},
		"two CRLs of one CA":              {append(append([]byte{}, current...), current...), "two CRLs"},
		"not a CRL":                       {[]byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"), "bad controllers CRL"},
		"PEM without a CRL":               {trusted.bundle, "no PEM block"},
		"empty":                           {nil, "empty"},
	} {
		err := v.LoadCRLs(c.data)
		if !errors.Is(err, ErrBadCRL) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrBadCRL saying %q", name, err, c.want)
		}
	}
	if _, _, err := v.Verify(signedBy(t, key, revoked), "t"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("after refused CRLs, the loaded one no longer revokes: %v", err)
	}
}
