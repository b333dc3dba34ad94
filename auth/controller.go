package auth

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"
)

// ControllerEKU is the extended key usage (id-kp) a controller's certificate must
// carry: "iot-hsm controller". Without a dedicated usage, any certificate the
// controllers' CA issued (an appliance's MQTT client certificate, a web server's)
// could sign commands whenever that CA also serves the broker.
var ControllerEKU = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 61046, 1, 1}

// ErrBadCRL is a controllers CRL that cannot be used: unreadable, not issued by a CA
// of the bundle, or a CA's second CRL.
var ErrBadCRL = errors.New("auth: bad controllers CRL")

// crl is what a CA's revocation list says, checked against that CA at load.
type crl struct {
	issuer     string
	nextUpdate time.Time
	revoked    map[string]bool // serial numbers, as decimal text
}

// caID names a CA by name and key, so a CRL is matched to the certificate that
// issued it, not to another CA of the same name.
func caID(c *x509.Certificate) string {
	return string(c.RawSubject) + "\x00" + string(c.RawSubjectPublicKeyInfo)
}

// parseBundle reads every CERTIFICATE block of the controllers' bundle.
func parseBundle(bundlePEM []byte) ([]*x509.Certificate, error) {
	var cas []*x509.Certificate
	rest := bundlePEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("auth: the controllers bundle's certificate %d: %v", len(cas)+1, err)
		}
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		return nil, errors.New("auth: the controllers bundle holds no PEM certificate")
	}
	return cas, nil
}

// LoadCRLs takes the controllers' CRLs: PEM ("X509 CRL" blocks, any number) or one
// DER CRL. Each must be signed by a CA of the bundle, and at most one per CA. A CRL
// past its nextUpdate loads (the appliance still starts), but Verify then refuses
// what that CA issued: see StaleCRLs. On error the verifier is unchanged. Call it
// before the verifier is in use.
func (v *Verifier) LoadCRLs(data []byte) error {
	ders, err := crlDERs(data)
	if err != nil {
		return err
	}
	out := map[string]*crl{}
	for _, der := range ders {
		rl, err := x509.ParseRevocationList(der)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrBadCRL, err)
		}
		ca, err := v.crlIssuer(rl)
		if err != nil {
			return err
		}
		if out[caID(ca)] != nil {
			return fmt.Errorf("%w: two CRLs of %s; keep only the current one", ErrBadCRL, ca.Subject)
		}
		c := &crl{issuer: ca.Subject.String(), nextUpdate: rl.NextUpdate, revoked: map[string]bool{}}
		for _, e := range rl.RevokedCertificateEntries {
			c.revoked[e.SerialNumber.String()] = true
		}
		out[caID(ca)] = c
	}
	v.crls = out
	return nil
}

func crlDERs(data []byte) ([][]byte, error) {
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		if len(data) == 0 {
			return nil, fmt.Errorf("%w: the file is empty", ErrBadCRL)
		}
		return [][]byte{data}, nil
	}
	var ders [][]byte
	for b, rest := pem.Decode(data); b != nil; b, rest = pem.Decode(rest) {
		if b.Type == "X509 CRL" {
			ders = append(ders, b.Bytes)
		}
	}
	if len(ders) == 0 {
		return nil, fmt.Errorf("%w: no PEM block \"X509 CRL\"", ErrBadCRL)
	}
	return ders, nil
}

// crlIssuer is the bundle CA whose key signed rl. A CRL signed by anyone else, even
// one naming a bundle CA as its issuer, is refused rather than skipped: the operator
// learns that the file does not revoke what they think it does.
func (v *Verifier) crlIssuer(rl *x509.RevocationList) (*x509.Certificate, error) {
	named := false
	for _, ca := range v.cas {
		if !bytes.Equal(ca.RawSubject, rl.RawIssuer) {
			continue
		}
		named = true
		if rl.CheckSignatureFrom(ca) == nil {
			if rl.NextUpdate.IsZero() {
				return nil, fmt.Errorf("%w: the CRL of %s has no nextUpdate", ErrBadCRL, ca.Subject)
			}
			return ca, nil
		}
	}
	if named {
		return nil, fmt.Errorf("%w: the CRL naming %s as issuer is not signed by that CA of the controllers bundle (or the CA may not sign CRLs)", ErrBadCRL, rl.Issuer)
	}
	return nil, fmt.Errorf("%w: the CRL of %s is not issued by a CA of the controllers bundle", ErrBadCRL, rl.Issuer)
}

// StaleCRLs names the CRLs past their nextUpdate at now: the CAs whose controllers
// are refused until a current CRL is installed.
func (v *Verifier) StaleCRLs(now time.Time) []string {
	var out []string
	for _, c := range v.crls {
		if now.After(c.nextUpdate) {
			out = append(out, fmt.Sprintf("the CRL of %s expired at %s", c.issuer, c.nextUpdate.UTC().Format(time.RFC3339)))
		}
	}
	slices.Sort(out)
	return out
}

// checkController accepts the chains x509.Verify found (with ExtKeyUsageAny, since
// it takes custom usages only as UnknownExtKeyUsage, which it does not match): at
// least one must allow ControllerEKU the way Verify nests usages, and no certificate
// in any of them may be revoked by its issuer's CRL.
func (v *Verifier) checkController(chains [][]*x509.Certificate, now time.Time) error {
	if err := v.checkRevocation(chains, now); err != nil {
		return err
	}
	var first error
	for _, chain := range chains {
		err := controllerUsage(chain)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// controllerUsage: the leaf names ControllerEKU itself; a CA above it that restricts
// its usages (as x509.Verify reads them, the anchor included) must allow it, by
// naming it or anyExtendedKeyUsage.
func controllerUsage(chain []*x509.Certificate) error {
	leaf := chain[0]
	if !slices.ContainsFunc(leaf.UnknownExtKeyUsage, ControllerEKU.Equal) {
		return fmt.Errorf("%w: the certificate %s lacks the iot-hsm controller extended key usage %s", ErrUnauthorized, leaf.Subject, ControllerEKU)
	}
	for _, ca := range chain[1:] {
		if len(ca.ExtKeyUsage) == 0 && len(ca.UnknownExtKeyUsage) == 0 ||
			slices.Contains(ca.ExtKeyUsage, x509.ExtKeyUsageAny) ||
			slices.ContainsFunc(ca.UnknownExtKeyUsage, ControllerEKU.Equal) {
			continue
		}
		return fmt.Errorf("%w: the CA %s limits its extended key usages and does not allow the iot-hsm controller usage %s", ErrUnauthorized, ca.Subject, ControllerEKU)
	}
	return nil
}

// checkRevocation refuses a chain in which a certificate is on its issuer's CRL, or
// in which that CRL is past its nextUpdate: an outdated CRL may miss a revocation,
// so it fails closed.
func (v *Verifier) checkRevocation(chains [][]*x509.Certificate, now time.Time) error {
	for _, chain := range chains {
		for i := 0; i+1 < len(chain); i++ {
			c := v.crls[caID(chain[i+1])]
			if c == nil {
				continue
			}
			if now.After(c.nextUpdate) {
				return fmt.Errorf("%w: the controllers CRL of %s expired at %s (this appliance's clock reads %s); requests under that CA are refused until a current CRL is installed",
					ErrUnauthorized, c.issuer, c.nextUpdate.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
			}
			if c.revoked[chain[i].SerialNumber.String()] {
				return fmt.Errorf("%w: the certificate %s (serial %s) is revoked by %s", ErrUnauthorized, chain[i].Subject, chain[i].SerialNumber, c.issuer)
			}
		}
	}
	return nil
}
