package hsm

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
)

// The helpers below call an optional interface, or answer ErrUnsupported naming the
// token and what it cannot do, so every caller refuses alike.

func unsupported(tok Token, what string) error {
	info := tok.Info()
	return fmt.Errorf("%w: %s is a %s token: %s", ErrUnsupported, info.ID, info.Kind, what)
}

// Login has tok check pin (PINLogin).
func Login(ctx context.Context, tok Token, pin string) error {
	l, ok := tok.(PINLogin)
	if !ok {
		return unsupported(tok, "it takes no PIN (its credentials come from the configuration)")
	}
	return l.Login(ctx, pin)
}

// Import stores key on tok (Importer).
func Import(ctx context.Context, tok Token, slot string, key crypto.Signer, opts KeyOptions) (crypto.PublicKey, error) {
	im, ok := tok.(Importer)
	if !ok {
		return nil, unsupported(tok, "it does not import keys; generate the key on it or take over an existing one")
	}
	return im.Import(ctx, slot, key, opts)
}

// StoreCertificate writes cert next to the slot key (CertificateStore).
func StoreCertificate(ctx context.Context, tok Token, slot string, cert *x509.Certificate) error {
	cs, ok := tok.(CertificateStore)
	if !ok {
		return unsupported(tok, "it holds no certificates; the appliance keeps them in its state")
	}
	return cs.StoreCertificate(ctx, slot, cert)
}

// Certificate reads the certificate stored next to the slot key (CertificateStore).
func Certificate(ctx context.Context, tok Token, slot string) (*x509.Certificate, error) {
	cs, ok := tok.(CertificateStore)
	if !ok {
		return nil, unsupported(tok, "it holds no certificates; the appliance keeps them in its state")
	}
	return cs.Certificate(ctx, slot)
}

// DeleteKey destroys the slot key and its certificate (KeyDeleter).
func DeleteKey(ctx context.Context, tok Token, slot string) error {
	d, ok := tok.(KeyDeleter)
	if !ok {
		return unsupported(tok, "its keys cannot be deleted; provision over the slot with overwrite")
	}
	return d.DeleteKey(ctx, slot)
}
