package ca

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// SignTBS signs a DER TBSCertificate the PKI built itself, under the same
// policy as IssueCertificate applied to the TBS's content (there is no CSR
// to check). Refusals wrap ErrPolicy:
//   - the issuer name is not the CA's subject byte for byte;
//   - the TBS's signature algorithm is not the one for the CA key;
//   - it is not a version 3 certificate, or its serial is not positive;
//   - validity, path length, name constraints (of SANs and subject) or
//     subject key as in IssueCertificate (without the path-length default:
//     a TBS is signed as is or not at all);
//   - an authority key identifier that is not the CA's;
//   - a critical extension Go does not process: x509.Verify would refuse
//     the signed certificate anyway, so the HSM is not asked to sign it.
//
// A TBS that is not DER or not a TBSCertificate is ErrProfile.
func (is *Issuer) SignTBS(tbs []byte, now time.Time) (*x509.Certificate, error) {
	if err := is.Usable(now); err != nil {
		return nil, err
	}
	sigAI, err := tbsSignatureAlgorithm(tbs)
	if err != nil {
		return nil, err
	}
	// x509.ParseCertificate does all the extension parsing the policy
	// needs; it does not look at the signature, so an empty one will do.
	draftDER, err := assembleCertificate(tbs, sigAI, nil)
	if err != nil {
		return nil, err
	}
	draft, err := x509.ParseCertificate(draftDER)
	if err != nil {
		return nil, fmt.Errorf("%w: TBS certificate does not parse: %w", ErrProfile, err)
	}
	alg, wantAI, hash, err := is.algorithm()
	if err != nil {
		return nil, err
	}
	if !sameSignatureAlgorithm(sigAI, wantAI, alg) {
		return nil, fmt.Errorf("%w: the TBS names signature algorithm %v, the CA key signs with %v", ErrPolicy, draft.SignatureAlgorithm, alg)
	}
	if err := is.checkTBS(draft); err != nil {
		return nil, err
	}

	h := hash.New()
	h.Write(tbs)
	sig, err := is.Signer.Sign(rand.Reader, h.Sum(nil), hash)
	if err != nil {
		return nil, fmt.Errorf("ca: sign certificate: %w", err)
	}
	der, err := assembleCertificate(tbs, sigAI, sig)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse signed certificate: %w", err)
	}
	if err := is.verifyIssued(cert); err != nil {
		return nil, err
	}
	return cert, nil
}

// checkTBS is the TBS-specific part of the policy, then the shared one.
func (is *Issuer) checkTBS(c *x509.Certificate) error {
	if c.Version != 3 {
		// Some verifiers treat a v1 certificate as a CA: signing one would
		// sidestep basicConstraints and path length.
		return fmt.Errorf("%w: TBS is a version %d certificate, only version 3 is signed", ErrPolicy, c.Version)
	}
	if !bytes.Equal(c.RawIssuer, is.Cert.RawSubject) {
		return fmt.Errorf("%w: TBS names issuer %q, this CA is %q", ErrPolicy, c.Issuer, is.Cert.Subject)
	}
	if c.SerialNumber.Sign() <= 0 {
		return fmt.Errorf("%w: TBS serial number is not positive", ErrPolicy)
	}
	if len(c.AuthorityKeyId) > 0 {
		want, err := is.keyID()
		if err != nil {
			return err
		}
		if !bytes.Equal(c.AuthorityKeyId, want) {
			return fmt.Errorf("%w: TBS authority key identifier %X is not the CA's %X", ErrPolicy, c.AuthorityKeyId, want)
		}
	}
	if len(c.UnhandledCriticalExtensions) > 0 {
		return fmt.Errorf("%w: TBS has critical extensions the appliance cannot process: %v", ErrPolicy, c.UnhandledCriticalExtensions)
	}
	if err := checkSANSyntax(c); err != nil {
		return fmt.Errorf("%w: TBS: %w", ErrPolicy, err)
	}
	return is.checkChild(c, c.PublicKey)
}

// tbsSignatureAlgorithm returns the signature AlgorithmIdentifier element of
// a TBSCertificate, which is also what the outer Certificate must repeat
// byte for byte (RFC 5280 4.1.1.2; Go refuses a mismatch). It insists on
// exactly one element with nothing after it, since a signature over bytes
// nobody parses would certify content nobody checked.
func tbsSignatureAlgorithm(tbs []byte) ([]byte, error) {
	in := cryptobyte.String(tbs)
	var body cryptobyte.String
	if !in.ReadASN1(&body, cbasn1.SEQUENCE) || !in.Empty() {
		return nil, fmt.Errorf("%w: TBS certificate is not a single DER SEQUENCE", ErrProfile)
	}
	var ai cryptobyte.String
	if !body.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!body.SkipASN1(cbasn1.INTEGER) ||
		!body.ReadASN1Element(&ai, cbasn1.SEQUENCE) {
		return nil, fmt.Errorf("%w: TBS certificate has no signature algorithm where expected", ErrProfile)
	}
	return ai, nil
}

// sameSignatureAlgorithm compares the TBS's AlgorithmIdentifier with the one
// we would write. For RSA, RFC 4055 section 5 has verifiers accept absent
// parameters as well as NULL, so a PKI that omits them is not refused.
func sameSignatureAlgorithm(got, want []byte, alg x509.SignatureAlgorithm) bool {
	if bytes.Equal(got, want) {
		return true
	}
	if alg != x509.SHA256WithRSA {
		return false
	}
	bare, err := asn1.Marshal(pkix.AlgorithmIdentifier{Algorithm: oidSHA256WithRSA})
	return err == nil && bytes.Equal(got, bare)
}

// assembleCertificate builds Certificate ::= SEQUENCE { tbsCertificate,
// signatureAlgorithm, signatureValue } from raw parts.
func assembleCertificate(tbs, sigAI, sig []byte) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddBytes(sigAI)
		b.AddASN1BitString(sig)
	})
	der, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("ca: encode certificate: %w", err)
	}
	return der, nil
}
