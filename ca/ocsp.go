package ca

import (
	"crypto/sha1"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// OCSPEntry is the status of one certificate issued by this CA.
type OCSPEntry struct {
	Serial *big.Int
	Status string // "good" "revoked" "unknown"
	// RevokedAt and Reason only for "revoked"; Reason is an RFC 5280
	// CRLReason code, -1 = none. For other statuses RevokedAt must be zero
	// and Reason -1 or 0 (Go's zero value).
	RevokedAt time.Time
	Reason    int
}

var (
	oidOCSPBasic = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 1}
	oidOCSPNonce = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}
	oidSHA1      = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
)

// maxNonce is RFC 8954's upper bound for the nonce length.
const maxNonce = 32

// SignOCSP returns the DER of a successful OCSPResponse (RFC 6960) with a
// BasicOCSPResponse signed by the CA key itself: responder ID by key hash,
// no certificates (the client has the issuer already), one SingleResponse
// per entry, each with thisUpdate and nextUpdate, and the nonce, if any, in
// an id-pkix-ocsp-nonce response extension whose value is the nonce as an
// OCTET STRING (RFC 8954). producedAt is now.
//
// CertIDs use SHA-1 for the issuer name and key hashes: that is what RFC
// 6960 clients (OpenSSL, browsers, x/crypto/ocsp) send and match against,
// and it identifies, it does not protect anything.
//
// The response is encoded here rather than with x/crypto/ocsp, whose
// CreateResponse writes one SingleResponse only, names the responder by
// subject, cannot carry a nonce and takes producedAt from the wall clock.
//
// Refusals wrap ErrPolicy: the CA is not Usable, thisUpdate is not before
// nextUpdate, nextUpdate is after the CA's notAfter. Malformed requests are
// ErrProfile: no entries, an unknown status, a bad serial or reason, a
// serial listed twice, a nonce longer than 32 octets.
func (is *Issuer) SignOCSP(entries []OCSPEntry, thisUpdate, nextUpdate time.Time, nonce []byte, now time.Time) ([]byte, error) {
	if err := is.Usable(now); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("%w: an OCSP response needs at least one entry", ErrProfile)
	}
	if err := checkOCSPEntries(entries); err != nil {
		return nil, err
	}
	if len(nonce) > maxNonce {
		return nil, fmt.Errorf("%w: nonce of %d octets, at most %d allowed", ErrProfile, len(nonce), maxNonce)
	}
	thisUpdate, nextUpdate, err := is.updateWindow(thisUpdate, nextUpdate)
	if err != nil {
		return nil, err
	}

	// The key hash of a CertID and a byKey ResponderID are both the SHA-1
	// of the subjectPublicKey BIT STRING contents: RFC 5280 method 1.
	keyHash, err := SubjectKeyID(is.Cert.PublicKey)
	if err != nil {
		return nil, err
	}
	nameHash := sha1.Sum(is.Cert.RawSubject)
	id := ocspIssuerID{nameHash: nameHash[:], keyHash: keyHash}
	responseData, err := id.responseData(entries, thisUpdate, nextUpdate, nonce, now)
	if err != nil {
		return nil, err
	}

	ai, sig, err := is.signMessage(responseData)
	if err != nil {
		return nil, err
	}
	return encodeOCSPResponse(responseData, ai, sig)
}

// ocspIssuerID holds the issuer's SHA-1 name and key hashes, shared by
// every CertID and the byKey ResponderID of one response.
type ocspIssuerID struct {
	nameHash, keyHash []byte
}

// responseData encodes the ResponseData to be signed, with producedAt now.
func (id ocspIssuerID) responseData(entries []OCSPEntry, thisUpdate, nextUpdate time.Time, nonce []byte, now time.Time) ([]byte, error) {
	var rd cryptobyte.Builder
	rd.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		// version is DEFAULT v1 and so left out (DER).
		b.AddASN1(cbasn1.Tag(2).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1OctetString(id.keyHash)
		})
		b.AddASN1GeneralizedTime(now.UTC().Truncate(time.Second))
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			for _, e := range entries {
				id.addSingleResponse(b, e, thisUpdate, nextUpdate)
			}
		})
		if len(nonce) > 0 {
			addOCSPNonce(b, nonce)
		}
	})
	responseData, err := rd.Bytes()
	if err != nil {
		return nil, fmt.Errorf("ca: encode OCSP response data: %w", err)
	}
	return responseData, nil
}

// addSingleResponse adds one SingleResponse: CertID, status, thisUpdate and
// nextUpdate.
func (id ocspIssuerID) addSingleResponse(b *cryptobyte.Builder, e OCSPEntry, thisUpdate, nextUpdate time.Time) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		id.addCertID(b, e.Serial)
		addCertStatus(b, e)
		b.AddASN1GeneralizedTime(thisUpdate)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1GeneralizedTime(nextUpdate)
		})
	})
}

func (id ocspIssuerID) addCertID(b *cryptobyte.Builder, serial *big.Int) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidSHA1)
			// With the NULL, as OpenSSL and x/crypto/ocsp write it
			// in requests: the CertID is then byte for byte the one
			// the client sent, for clients that compare raw DER.
			b.AddASN1NULL()
		})
		b.AddASN1OctetString(id.nameHash)
		b.AddASN1OctetString(id.keyHash)
		b.AddASN1BigInt(serial)
	})
}

// addOCSPNonce adds the responseExtensions with the nonce extension, whose
// value is the nonce wrapped in an OCTET STRING (RFC 8954).
func addOCSPNonce(b *cryptobyte.Builder, nonce []byte) {
	b.AddASN1(cbasn1.Tag(1).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidOCSPNonce)
				b.AddASN1(cbasn1.OCTET_STRING, func(b *cryptobyte.Builder) {
					b.AddASN1OctetString(nonce)
				})
			})
		})
	})
}

// encodeOCSPResponse wraps the signed ResponseData into a BasicOCSPResponse
// and that into a successful OCSPResponse.
func encodeOCSPResponse(responseData, ai, sig []byte) ([]byte, error) {
	var basic cryptobyte.Builder
	basic.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(responseData)
		b.AddBytes(ai)
		b.AddASN1BitString(sig)
	})
	basicDER, err := basic.Bytes()
	if err != nil {
		return nil, fmt.Errorf("ca: encode OCSP response: %w", err)
	}
	var resp cryptobyte.Builder
	resp.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Enum(0) // successful
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidOCSPBasic)
				b.AddASN1OctetString(basicDER)
			})
		})
	})
	der, err := resp.Bytes()
	if err != nil {
		return nil, fmt.Errorf("ca: encode OCSP response: %w", err)
	}
	return der, nil
}

func checkOCSPEntries(entries []OCSPEntry) error {
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		switch e.Status {
		case "revoked":
			if err := checkRevocation(e.Serial, e.RevokedAt, e.Reason); err != nil {
				return err
			}
			if e.Reason == reasonRemoveFromCRL {
				return fmt.Errorf("%w: serial %X: remove_from_crl contradicts status revoked", ErrProfile, e.Serial)
			}
		case "good", "unknown":
			if e.Serial == nil {
				return fmt.Errorf("%w: OCSP entry without serial", ErrProfile)
			}
			if err := checkSerial(e.Serial); err != nil {
				return fmt.Errorf("%w (serial %X)", err, e.Serial)
			}
			if !e.RevokedAt.IsZero() || e.Reason > 0 || e.Reason < -1 {
				return fmt.Errorf("%w: serial %X: revocation time or reason given with status %q", ErrProfile, e.Serial, e.Status)
			}
		default:
			return fmt.Errorf("%w: unknown OCSP status %q", ErrProfile, e.Status)
		}
		key := e.Serial.String()
		if seen[key] {
			return fmt.Errorf("%w: serial %X listed twice", ErrProfile, e.Serial)
		}
		seen[key] = true
	}
	return nil
}

// addCertStatus writes the CertStatus CHOICE; its alternatives are
// IMPLICIT tagged (RFC 6960 module).
func addCertStatus(b *cryptobyte.Builder, e OCSPEntry) {
	switch e.Status {
	case "good":
		b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(*cryptobyte.Builder) {})
	case "unknown":
		b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(*cryptobyte.Builder) {})
	case "revoked":
		b.AddASN1(cbasn1.Tag(1).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1GeneralizedTime(e.RevokedAt.UTC().Truncate(time.Second))
			// Unspecified is left out like in CRLs (RFC 5280 5.3.1).
			if e.Reason > 0 {
				b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
					b.AddASN1Enum(int64(e.Reason))
				})
			}
		})
	}
}
