package pkcs11

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// StoreCertificate implements hsm.CertificateStore: an X.509 certificate object with the key's
// CKA_ID and label, so other PKCS#11 tools pair it with the key.
func (t *Token) StoreCertificate(ctx context.Context, slot string, cert *x509.Certificate) error {
	id, name, err := ParseSlot(slot)
	if err != nil {
		return err
	}
	serial, err := asn1.Marshal(cert.SerialNumber)
	if err != nil {
		return fmt.Errorf("pkcs11: certificate serial: %w", err)
	}
	return t.do(ctx, func(s pkcs11.SessionHandle) error {
		keys, err := t.find(s, id, classPtr(pkcs11.CKO_PRIVATE_KEY))
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			return fmt.Errorf("%w: no key in %s/%s", hsm.ErrNotFound, t.id, name)
		}
		label := name
		if a, err := t.m.ctx.GetAttributeValue(s, keys[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)}); err == nil {
			label = string(a[0].Value)
		}
		old, err := t.find(s, id, classPtr(pkcs11.CKO_CERTIFICATE))
		if err != nil {
			return err
		}
		// Create first, then remove the old ones: a failure leaves the previous
		// certificate in place rather than none.
		if _, err := t.m.ctx.CreateObject(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
			pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, cert.RawSubject),
			pkcs11.NewAttribute(pkcs11.CKA_ISSUER, cert.RawIssuer),
			pkcs11.NewAttribute(pkcs11.CKA_SERIAL_NUMBER, serial),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, cert.Raw),
		}); err != nil {
			return err
		}
		for _, o := range old {
			if err := t.m.ctx.DestroyObject(s, o); err != nil {
				return err
			}
		}
		return nil
	})
}

// Certificate implements hsm.CertificateStore.
func (t *Token) Certificate(ctx context.Context, slot string) (*x509.Certificate, error) {
	id, name, err := ParseSlot(slot)
	if err != nil {
		return nil, err
	}
	var cert *x509.Certificate
	err = t.do(ctx, func(s pkcs11.SessionHandle) error {
		objs, err := t.find(s, id, classPtr(pkcs11.CKO_CERTIFICATE))
		if err != nil {
			return err
		}
		if len(objs) == 0 {
			return fmt.Errorf("%w: no certificate in %s/%s", hsm.ErrNotFound, t.id, name)
		}
		a, err := t.m.ctx.GetAttributeValue(s, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return err
		}
		cert, err = x509.ParseCertificate(a[0].Value)
		return err
	})
	return cert, err
}
