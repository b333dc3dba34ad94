package kmstest

import (
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
)

// attestationCA stands in for the HSM vendor's and Google's attestation PKIs: an HSM
// card key signs a statement about each key it generates, and the card's certificate
// chains to the vendor's root and, separately, to Google's.
type attestationCA struct {
	vendorRoot, googleRoot *x509.Certificate
	card                   *ecdsa.PrivateKey
	cardVendor, cardGoogle *x509.Certificate
	partition              *x509.Certificate
}

// statementMagic opens every fake statement. Real statements are in the HSM vendor's
// binary format (Cavium/Marvell), gzip-compressed; this one is gzip too, so clients
// see the same shape, but its inside is ours.
const statementMagic = "KMSTEST-ATTESTATION-1"

func newAttestationCA() (*attestationCA, error) {
	ca := &attestationCA{}
	var err error
	vendorKey, vendorRoot, err := selfSigned("kmstest HSM Vendor Root")
	if err != nil {
		return nil, err
	}
	googleKey, googleRoot, err := selfSigned("kmstest Google Attestation Root")
	if err != nil {
		return nil, err
	}
	ca.vendorRoot, ca.googleRoot = vendorRoot, googleRoot
	if ca.card, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	if ca.cardVendor, err = issue("kmstest HSM card", &ca.card.PublicKey, vendorRoot, vendorKey); err != nil {
		return nil, err
	}
	if ca.cardGoogle, err = issue("kmstest HSM card", &ca.card.PublicKey, googleRoot, googleKey); err != nil {
		return nil, err
	}
	if ca.partition, err = issue("kmstest HSM partition", &ca.card.PublicKey, googleRoot, googleKey); err != nil {
		return nil, err
	}
	return ca, nil
}

func selfSigned(cn string) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return key, c, err
}

func issue(cn string, pub crypto.PublicKey, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(5 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func pemOf(certs ...*x509.Certificate) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return out
}

// statement is the attestation of a key the "HSM" generated: the key's SPKI signed by
// the card key, gzip-compressed, with the certificate chains of the card.
func (ca *attestationCA) statement(pub crypto.PublicKey) (*kmspb.KeyOperationAttestation, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	body := append([]byte(statementMagic), binary.BigEndian.AppendUint16(nil, uint16(len(spki)))...)
	body = append(body, spki...)
	sum := sha256.Sum256(body)
	sig, err := ecdsa.SignASN1(rand.Reader, ca.card, sum[:])
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(body)
	zw.Write(sig)
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return &kmspb.KeyOperationAttestation{
		Format:  kmspb.KeyOperationAttestation_CAVIUM_V2_COMPRESSED,
		Content: buf.Bytes(),
		CertChains: &kmspb.KeyOperationAttestation_CertificateChains{
			CaviumCerts:          pemOf(ca.cardVendor, ca.vendorRoot),
			GoogleCardCerts:      pemOf(ca.cardGoogle, ca.googleRoot),
			GooglePartitionCerts: pemOf(ca.partition, ca.googleRoot),
		},
	}, nil
}

// VerifyStatement checks a statement made by this package: it must attest pub and be
// signed by the key of card, the first certificate of a chain.
func VerifyStatement(content []byte, card *x509.Certificate, pub crypto.PublicKey) error {
	zr, err := gzip.NewReader(bytes.NewReader(content))
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(raw, []byte(statementMagic)) || len(raw) < len(statementMagic)+2 {
		return errors.New("kmstest: not a kmstest statement")
	}
	n := int(binary.BigEndian.Uint16(raw[len(statementMagic):]))
	end := len(statementMagic) + 2 + n
	if end > len(raw) {
		return errors.New("kmstest: truncated statement")
	}
	want, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	if !bytes.Equal(raw[len(statementMagic)+2:end], want) {
		return errors.New("kmstest: the statement attests another key")
	}
	cardKey, ok := card.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("kmstest: card key is %T", card.PublicKey)
	}
	sum := sha256.Sum256(raw[:end])
	if !ecdsa.VerifyASN1(cardKey, sum[:], raw[end:]) {
		return errors.New("kmstest: the statement's signature does not verify")
	}
	return nil
}
