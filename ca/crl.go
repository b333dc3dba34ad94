package ca

import (
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math/big"
	"time"
)

// Revoked is one CRL entry.
type Revoked struct {
	Serial    *big.Int
	RevokedAt time.Time
	Reason    int // RFC 5280 CRLReason code, -1 = none
}

// reasonRemoveFromCRL only has a meaning in delta CRLs (RFC 5280 5.3.1).
const reasonRemoveFromCRL = 8

// CreateCRL signs a full CRL (v2, with CRL number and AKI) and returns its
// DER. Refusals wrap ErrPolicy: the CA is not Usable, its keyUsage
// extension lacks cRLSign, number is not positive, thisUpdate is not
// before nextUpdate, nextUpdate is after the CA's notAfter (a CRL promising
// an update the CA cannot sign would leave relying parties without
// revocation data they were told to expect).
//
// Bad entries are ErrProfile: a missing or non-positive serial, a serial
// listed twice, a zero revocation time, a reason that is not a CRLReason,
// or remove_from_crl, which only delta CRLs may carry. Reason unspecified
// (0) is written as no reason code, as RFC 5280 5.3.1 asks.
func (is *Issuer) CreateCRL(number *big.Int, thisUpdate, nextUpdate time.Time, revoked []Revoked, now time.Time) ([]byte, error) {
	if err := is.Usable(now); err != nil {
		return nil, err
	}
	if hasKeyUsage(is.Cert) && is.Cert.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return nil, fmt.Errorf("%w: CA certificate %q has no cRLSign key usage", ErrPolicy, is.Cert.Subject)
	}
	if number == nil || number.Sign() <= 0 {
		return nil, fmt.Errorf("%w: CRL number must be positive", ErrPolicy)
	}
	if b := number.Bytes(); len(b) > 20 || len(b) == 20 && b[0]&0x80 != 0 {
		return nil, fmt.Errorf("%w: CRL number longer than 20 octets", ErrProfile)
	}
	thisUpdate, nextUpdate, err := is.updateWindow(thisUpdate, nextUpdate)
	if err != nil {
		return nil, err
	}
	entries, err := crlEntries(revoked)
	if err != nil {
		return nil, err
	}
	sigAlg, err := SignatureAlgorithm(is.Signer.Public())
	if err != nil {
		return nil, err
	}
	issuer, err := is.crlIssuer()
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		SignatureAlgorithm:        sigAlg,
		Number:                    number,
		ThisUpdate:                thisUpdate,
		NextUpdate:                nextUpdate,
		RevokedCertificateEntries: entries,
	}, issuer, is.Signer)
	if err != nil {
		return nil, fmt.Errorf("ca: sign CRL: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse signed CRL: %w", err)
	}
	if err := crl.CheckSignatureFrom(is.Cert); err != nil {
		return nil, fmt.Errorf("ca: the signed CRL does not verify against the CA certificate: %w", err)
	}
	return der, nil
}

// updateWindow checks a thisUpdate/nextUpdate pair, shared by CRLs and
// OCSP, after truncating both to what gets encoded.
func (is *Issuer) updateWindow(thisUpdate, nextUpdate time.Time) (time.Time, time.Time, error) {
	if thisUpdate.IsZero() || nextUpdate.IsZero() {
		return time.Time{}, time.Time{}, fmt.Errorf("%w: this_update and next_update are both required", ErrProfile)
	}
	thisUpdate = thisUpdate.UTC().Truncate(time.Second)
	nextUpdate = nextUpdate.UTC().Truncate(time.Second)
	if !thisUpdate.Before(nextUpdate) {
		return time.Time{}, time.Time{}, fmt.Errorf("%w: this_update %s is not before next_update %s", ErrPolicy, rfc3339(thisUpdate), rfc3339(nextUpdate))
	}
	if nextUpdate.After(is.Cert.NotAfter) {
		return time.Time{}, time.Time{}, fmt.Errorf("%w: next_update %s is after the CA's notAfter %s", ErrPolicy, rfc3339(nextUpdate), rfc3339(is.Cert.NotAfter))
	}
	return thisUpdate, nextUpdate, nil
}

func crlEntries(revoked []Revoked) ([]x509.RevocationListEntry, error) {
	entries := make([]x509.RevocationListEntry, 0, len(revoked))
	seen := make(map[string]bool, len(revoked))
	for _, r := range revoked {
		if err := checkRevocation(r.Serial, r.RevokedAt, r.Reason); err != nil {
			return nil, err
		}
		if r.Reason == reasonRemoveFromCRL {
			return nil, fmt.Errorf("%w: serial %X: remove_from_crl only appears in delta CRLs", ErrProfile, r.Serial)
		}
		key := r.Serial.String()
		if seen[key] {
			return nil, fmt.Errorf("%w: serial %X listed twice", ErrProfile, r.Serial)
		}
		seen[key] = true
		e := x509.RevocationListEntry{
			SerialNumber:   r.Serial,
			RevocationTime: r.RevokedAt.UTC().Truncate(time.Second),
		}
		// CreateRevocationList leaves the reason code out for 0, which
		// serves both "none" and "unspecified".
		if r.Reason > 0 {
			e.ReasonCode = r.Reason
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// checkRevocation validates what CRL entries and revoked OCSP entries have
// in common.
func checkRevocation(serial *big.Int, revokedAt time.Time, reason int) error {
	if serial == nil {
		return fmt.Errorf("%w: revoked entry without serial", ErrProfile)
	}
	if err := checkSerial(serial); err != nil {
		return fmt.Errorf("%w (serial %X)", err, serial)
	}
	if revokedAt.IsZero() {
		return fmt.Errorf("%w: serial %X: revocation time missing", ErrProfile, serial)
	}
	if !validReason(reason) {
		return fmt.Errorf("%w: serial %X: %d is not a CRLReason code", ErrProfile, serial, reason)
	}
	return nil
}

// crlIssuer adapts the CA certificate to x509.CreateRevocationList, which
// reads only its subject, SKI and keyUsage. That function insists on the
// cRLSign bit even when the certificate has no keyUsage extension at all,
// where RFC 5280 4.2.1.3 puts no restriction on the key, and on an SKI,
// which a CA certificate from elsewhere may lack. A shallow copy says what
// the certificate means, without touching the Issuer's.
func (is *Issuer) crlIssuer() (*x509.Certificate, error) {
	issuer := *is.Cert
	if !hasKeyUsage(&issuer) {
		issuer.KeyUsage = x509.KeyUsageCRLSign
	}
	if len(issuer.SubjectKeyId) == 0 {
		id, err := is.keyID()
		if err != nil {
			return nil, err
		}
		issuer.SubjectKeyId = id
	}
	return &issuer, nil
}
