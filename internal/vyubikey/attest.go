package vyubikey

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"
)

// Yubico's attestation extensions (developers.yubico.com/PIV/Introduction/PIV_attestation.html).
var (
	oidFirmware   = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 41482, 3, 3}
	oidSerial     = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 41482, 3, 7}
	oidPolicy     = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 41482, 3, 8}
	oidFormFactor = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 41482, 3, 9}
)

// RootCommonName is the subject of every virtual card's attestation root.
const RootCommonName = "Virtual Yubico PIV Root CA"

// attestation validity: the f9 certificate, and so every attestation
// (which copies it), is valid from its creation to 2071 like Yubico's.
var attestNotAfter = time.Date(2071, 1, 1, 0, 0, 0, 0, time.UTC)

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// newAttestationCA makes the device's attestation hierarchy: a root CA
// ("Virtual Yubico PIV Root CA Serial <serial>", ECDSA P-384) and, signed by it,
// the f9 attestation key (RSA-2048, as on a YubiKey) and its certificate.
func newAttestationCA(serial uint32) (rootKey, rootCert, f9Key, f9Cert []byte, err error) {
	now := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	rk, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	rs, err := randomSerial()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	rootTmpl := &x509.Certificate{
		SerialNumber:          rs,
		Subject:               pkix.Name{CommonName: fmt.Sprintf("%s Serial %d", RootCommonName, serial)},
		NotBefore:             now,
		NotAfter:              attestNotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            1,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rk.PublicKey, rk)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	fk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	fs, err := randomSerial()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	f9Tmpl := &x509.Certificate{
		SerialNumber:          fs,
		Subject:               pkix.Name{CommonName: "Yubico PIV Attestation"},
		NotBefore:             now,
		NotAfter:              attestNotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	f9DER, err := x509.CreateCertificate(rand.Reader, f9Tmpl, root, &fk.PublicKey, rk)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if rootKey, err = marshalKey(rk); err != nil {
		return nil, nil, nil, nil, err
	}
	if f9Key, err = marshalKey(fk); err != nil {
		return nil, nil, nil, nil, err
	}
	return rootKey, rootDER, f9Key, f9DER, nil
}

// attestCertificate issues the certificate ATTEST returns for a slot's key:
// subject "YubiKey PIV Attestation <slot>", issued by the f9 certificate with
// the f9 key, validity copied from the f9 certificate, and Yubico's firmware,
// serial, policy and form-factor extensions.
func attestCertificate(slot byte, pub crypto.PublicKey, pinPolicy, touchPolicy byte,
	version [3]byte, serial uint32, formFactor byte, f9Cert *x509.Certificate, f9Key crypto.Signer) ([]byte, error) {
	sn, err := randomSerial()
	if err != nil {
		return nil, err
	}
	serialDER, err := asn1.Marshal(int64(serial))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: fmt.Sprintf("YubiKey PIV Attestation %02x", slot)},
		NotBefore:    f9Cert.NotBefore,
		NotAfter:     f9Cert.NotAfter,
		ExtraExtensions: []pkix.Extension{
			{Id: oidFirmware, Value: []byte{version[0], version[1], version[2]}},
			{Id: oidSerial, Value: serialDER},
			{Id: oidPolicy, Value: []byte{pinPolicy, touchPolicy}},
			{Id: oidFormFactor, Value: []byte{formFactor}},
		},
	}
	xk, isX25519 := pub.(*ecdh.PublicKey)
	if !isX25519 {
		return x509.CreateCertificate(rand.Reader, tmpl, f9Cert, pub, f9Key)
	}
	// crypto/x509 cannot put an X25519 key in a certificate: issue it for a
	// stand-in key, then swap in the X25519 SubjectPublicKeyInfo and sign again.
	standIn, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f9Cert, standIn, f9Key)
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(xk)
	if err != nil {
		return nil, err
	}
	return replaceSPKI(der, spki, f9Key)
}

// replaceSPKI re-issues a certificate with another SubjectPublicKeyInfo,
// signed by the same issuer key with the same signature algorithm.
func replaceSPKI(der, spki []byte, key crypto.Signer) ([]byte, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	var outer struct {
		TBS    asn1.RawValue
		SigAlg asn1.RawValue
		Sig    asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &outer); err != nil {
		return nil, err
	}
	// TBSCertificate: [0] version, serial, signature, issuer, validity,
	// subject, subjectPublicKeyInfo, [3] extensions.
	var fields []asn1.RawValue
	for rest := outer.TBS.Bytes; len(rest) > 0; {
		var f asn1.RawValue
		if rest, err = asn1.Unmarshal(rest, &f); err != nil {
			return nil, err
		}
		fields = append(fields, f)
	}
	if len(fields) < 7 {
		return nil, fmt.Errorf("unexpected TBSCertificate")
	}
	var body []byte
	for i, f := range fields {
		if i == 6 {
			body = append(body, spki...)
		} else {
			body = append(body, f.FullBytes...)
		}
	}
	tbs := tlv(0x30, body)
	var h crypto.Hash
	var opts crypto.SignerOpts
	switch cert.SignatureAlgorithm {
	case x509.SHA256WithRSA, x509.ECDSAWithSHA256:
		h = crypto.SHA256
	case x509.SHA384WithRSA, x509.ECDSAWithSHA384:
		h = crypto.SHA384
	case x509.SHA512WithRSA, x509.ECDSAWithSHA512:
		h = crypto.SHA512
	case x509.PureEd25519:
	default:
		return nil, fmt.Errorf("signature algorithm %v", cert.SignatureAlgorithm)
	}
	msg := tbs
	opts = h
	if h != 0 {
		hh := h.New()
		hh.Write(tbs)
		msg = hh.Sum(nil)
	}
	sig, err := key.Sign(rand.Reader, msg, opts)
	if err != nil {
		return nil, err
	}
	bits, err := asn1.Marshal(asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)})
	if err != nil {
		return nil, err
	}
	return tlv(0x30, tbs, outer.SigAlg.FullBytes, bits), nil
}

// certObject wraps a DER certificate the way PIV certificate objects hold it:
// 70 certificate, 71 CertInfo (00: uncompressed), FE error detection code.
func certObject(der []byte) []byte {
	out := tlv(0x70, der)
	out = append(out, tlv(0x71, []byte{0x00})...)
	return append(out, 0xFE, 0x00)
}
