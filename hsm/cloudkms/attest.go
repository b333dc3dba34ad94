package cloudkms

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"cloud.google.com/go/kms/apiv1/kmspb"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// Attestation is what Cloud KMS gives for an HSM-protected key version: a statement
// signed by the HSM that generated the key, in the HSM vendor's binary format
// (Cavium/Marvell, gzip-compressed), and the certificate chains vouching for the HSM's
// signing key, from the vendor and from Google. The appliance passes them on as they
// came; it does not parse the vendor's format, so verifying the statement is for an
// auditor, with Google's published verification tools and roots.
type Attestation struct {
	Version              string // key version resource name
	Format               string // e.g. CAVIUM_V2_COMPRESSED
	Statement            []byte
	CaviumCerts          []*x509.Certificate
	GoogleCardCerts      []*x509.Certificate
	GooglePartitionCerts []*x509.Certificate
}

// Attestation fetches the attestation of a slot's key version.
func (t *Token) Attestation(ctx context.Context, slot string) (*Attestation, error) {
	key, version, err := ParseSlot(slot)
	if err != nil {
		return nil, err
	}
	name := t.versionName(key, version)
	var v *kmspb.CryptoKeyVersion
	err = t.call(ctx, "get key version", func(ctx context.Context) (err error) {
		v, err = t.p.client.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: name})
		return err
	})
	if err != nil {
		return nil, err
	}
	if v.GetName() != name {
		return nil, integrity("key version %s came back as %q", name, v.GetName())
	}
	if v.GetProtectionLevel() != kmspb.ProtectionLevel_HSM {
		return nil, fmt.Errorf("%w: %s is protected by %v; Cloud KMS attests HSM-protected key versions only", hsm.ErrUnsupported, name, v.GetProtectionLevel())
	}
	at := v.GetAttestation()
	if at == nil || len(at.GetContent()) == 0 {
		return nil, fmt.Errorf("%w: Cloud KMS gave no attestation for %s", hsm.ErrNotFound, name)
	}
	a := &Attestation{Version: name, Format: at.GetFormat().String(), Statement: at.GetContent()}
	chains := at.GetCertChains()
	for _, c := range []struct {
		field string
		pems  []string
		dst   *[]*x509.Certificate
	}{
		{"cavium_certs", chains.GetCaviumCerts(), &a.CaviumCerts},
		{"google_card_certs", chains.GetGoogleCardCerts(), &a.GoogleCardCerts},
		{"google_partition_certs", chains.GetGooglePartitionCerts(), &a.GooglePartitionCerts},
	} {
		for _, p := range c.pems {
			certs, err := parseCerts(p)
			if err != nil {
				return nil, fmt.Errorf("cloudkms %s: attestation of %s: %s: %w", t.id, name, c.field, err)
			}
			*c.dst = append(*c.dst, certs...)
		}
	}
	return a, nil
}

// parseCerts reads the certificates of one PEM string (Cloud KMS gives one per entry,
// but a bundle costs nothing to accept).
func parseCerts(p string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(p)
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
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no PEM certificate in an entry")
	}
	return out, nil
}

// Certificates lists every certificate of the three chains in order (vendor, Google
// card, Google partition), each once.
func (a *Attestation) Certificates() []*x509.Certificate {
	var out []*x509.Certificate
	for _, chain := range [][]*x509.Certificate{a.CaviumCerts, a.GoogleCardCerts, a.GooglePartitionCerts} {
		for _, c := range chain {
			dup := false
			for _, o := range out {
				dup = dup || bytes.Equal(o.Raw, c.Raw)
			}
			if !dup {
				out = append(out, c)
			}
		}
	}
	return out
}

// PEM encodes the whole attestation: the statement as a "CLOUD KMS ATTESTATION" block
// (base64 of the bytes Cloud KMS gave, with the format and the version as headers,
// and the number of certificates in each chain), then the three chains' certificates
// in order.
func (a *Attestation) PEM() []byte {
	var buf bytes.Buffer
	pem.Encode(&buf, &pem.Block{Type: "CLOUD KMS ATTESTATION", Headers: map[string]string{
		"Format":      a.Format,
		"Key-Version": a.Version,
		"Chains": fmt.Sprintf("cavium_certs=%d google_card_certs=%d google_partition_certs=%d",
			len(a.CaviumCerts), len(a.GoogleCardCerts), len(a.GooglePartitionCerts)),
	}, Bytes: a.Statement})
	for _, chain := range [][]*x509.Certificate{a.CaviumCerts, a.GoogleCardCerts, a.GooglePartitionCerts} {
		for _, c := range chain {
			pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
	}
	return buf.Bytes()
}

// Attest implements hsm.Attester with the certificate chains of the key version's
// attestation (see Attestation.Certificates). The statement itself is not a
// certificate: Attestation.PEM returns it with the chains.
func (t *Token) Attest(ctx context.Context, slot string) ([]*x509.Certificate, error) {
	a, err := t.Attestation(ctx, slot)
	if err != nil {
		return nil, err
	}
	return a.Certificates(), nil
}
