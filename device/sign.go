package device

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// issuerCache keeps a slot's parsed CA certificate, chain and signer between
// signatures; it is dropped whenever the slot changes.
type issuerCache struct {
	issuer *ca.Issuer
}

// routeSign resolves the CA slot of a sign request (by slot_id, by ca_id, or by the
// CA topic it came on) so it runs on that token's worker.
func (d *Device) routeSign(j *job) (string, *protocol.Error) {
	var a protocol.SignArgs
	if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
		return "", e
	}
	if j.caID != "" {
		if a.CAID != "" && a.CAID != j.caID {
			return "", protocol.Errorf(protocol.CodeBadRequest, "ca_id %s does not match the topic's %s", a.CAID, j.caID)
		}
		a.CAID = j.caID
	}
	switch a.Kind {
	case protocol.KindCertificate, protocol.KindCRL, protocol.KindCMS, protocol.KindOCSP, protocol.KindTBS:
	case protocol.KindDigest:
		if !d.opts.AllowDigest {
			return "", protocol.Errorf(protocol.CodePolicyDenied, "raw digest signing is disabled on this appliance")
		}
	case "":
		return "", protocol.Errorf(protocol.CodeBadRequest, "kind is required")
	default:
		return "", protocol.Errorf(protocol.CodeBadRequest, "unknown kind %q (want certificate, crl, cms, ocsp, tbs_certificate or digest)", a.Kind)
	}
	rec, err := d.signingSlot(a.SlotID, a.CAID)
	if err != nil {
		return "", toProtocolError(err)
	}
	j.slotID, j.rec.Kind = rec.ID, a.Kind
	j.run = func(ctx context.Context, j *job) (any, error) {
		res, err := d.sign(ctx, j, a)
		d.signed(j.slotID, err)
		return res, err
	}
	return rec.HSM, nil
}

// signingSlot finds the provisioned slot to sign with. By ca_id, a slot whose token
// is present wins over one whose token is not, and among those the least busy.
func (d *Device) signingSlot(slotID, caID string) (store.Slot, error) {
	switch {
	case slotID != "" && caID != "":
		return store.Slot{}, fmt.Errorf("%w: give slot_id or ca_id, not both", ErrBadRequest)
	case slotID != "":
		return d.slots.Record(slotID, store.Provisioned)
	case caID == "":
		return store.Slot{}, fmt.Errorf("%w: slot_id or ca_id is required", ErrBadRequest)
	}
	recs, err := d.store.Slots()
	if err != nil {
		return store.Slot{}, err
	}
	var found *store.Slot
	var present []store.Slot
	for i, r := range recs {
		if r.CAID != caID || r.State != store.Provisioned {
			continue
		}
		// Presence as last seen by the scans: asking the token would wait for its
		// lock, held while it signs, and this runs on the transport's goroutine.
		d.mu.Lock()
		here := d.present[r.HSM]
		d.mu.Unlock()
		if here {
			present = append(present, r)
		}
		if found == nil {
			found = &recs[i]
		}
	}
	if len(present) > 0 {
		return d.leastBusy(present), nil
	}
	if found == nil {
		return store.Slot{}, fmt.Errorf("%w: no provisioned slot holds CA %s", ErrNotFoundCA, caID)
	}
	return *found, nil
}

func (d *Device) issuer(ctx context.Context, slotID string) (*ca.Issuer, error) {
	d.mu.Lock()
	c := d.issuers[slotID]
	d.mu.Unlock()
	if c != nil {
		return c.issuer, nil
	}
	rec, _, signer, err := d.slots.Signer(ctx, slotID, store.Provisioned)
	if err != nil {
		return nil, err
	}
	cert, err := certOf(rec.Certificate)
	if err != nil {
		return nil, fmt.Errorf("slot %s: stored certificate: %w", slotID, err)
	}
	var chain []*x509.Certificate
	if strings.TrimSpace(rec.Chain) != "" {
		if chain, err = ca.ParseCertificatesPEM([]byte(rec.Chain)); err != nil {
			return nil, fmt.Errorf("slot %s: stored chain: %w", slotID, err)
		}
	}
	is := &ca.Issuer{Cert: cert, Chain: chain, Signer: d.traced(signer)}
	d.mu.Lock()
	d.issuers[slotID] = &issuerCache{issuer: is}
	d.mu.Unlock()
	return is, nil
}

func (d *Device) sign(ctx context.Context, j *job, a protocol.SignArgs) (any, error) {
	slotID := j.slotID
	is, err := d.issuer(ctx, slotID)
	if err != nil {
		return nil, err
	}
	now := d.opts.Now()
	res := protocol.SignResult{SlotID: slotID}
	switch a.Kind {
	case protocol.KindCertificate:
		csr, err := ca.ParseCSRPEM([]byte(a.CSR))
		if err != nil {
			return nil, fmt.Errorf("%w: csr: %w", ErrBadRequest, err)
		}
		p, err := profileOf(a.Profile)
		if err != nil {
			return nil, err
		}
		cert, err := is.IssueCertificate(csr, p, now)
		if err != nil {
			return nil, err
		}
		res.Certificate, res.Serial = string(ca.EncodeCertificatePEM(cert)), hex.EncodeToString(cert.SerialNumber.Bytes())
		j.rec.Subject, j.rec.Serial, j.rec.Digest = cert.Subject.String(), res.Serial, digestHex(cert.Raw)
	case protocol.KindTBS:
		if len(a.TBS) == 0 {
			return nil, fmt.Errorf("%w: tbs is required", ErrBadRequest)
		}
		cert, err := is.SignTBS(a.TBS, now)
		if err != nil {
			return nil, err
		}
		res.Certificate, res.Serial = string(ca.EncodeCertificatePEM(cert)), hex.EncodeToString(cert.SerialNumber.Bytes())
		j.rec.Subject, j.rec.Serial, j.rec.Digest = cert.Subject.String(), res.Serial, digestHex(cert.Raw)
	case protocol.KindCRL:
		num, der, err := d.crl(is, a, now)
		if err != nil {
			return nil, err
		}
		if err := d.recordCRLNumber(is, num); err != nil {
			return nil, err
		}
		res.CRL = string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
		j.rec.Serial, j.rec.Digest = a.Number.String(), digestHex(der)
	case protocol.KindCMS:
		if len(a.Data) == 0 {
			return nil, fmt.Errorf("%w: data is required", ErrBadRequest)
		}
		if res.CMS, err = is.SignCMS(a.Data, a.Detached, now); err != nil {
			return nil, err
		}
		j.rec.Digest = digestHex(a.Data)
	case protocol.KindOCSP:
		if res.OCSP, err = d.ocsp(is, a, now); err != nil {
			return nil, err
		}
		j.rec.Digest = digestHex(res.OCSP)
	case protocol.KindDigest:
		h, err := hashOf(a.Hash)
		if err != nil {
			return nil, err
		}
		if res.Signature, j.check, err = is.SignDigestThenCheck(a.Digest, h, a.PSS, now); err != nil {
			return nil, err
		}
		j.rec.Digest = hex.EncodeToString(a.Digest)
	}
	d.signatures.Add(1)
	return res, nil
}

func (d *Device) crl(is *ca.Issuer, a protocol.SignArgs, now time.Time) (*big.Int, []byte, error) {
	if a.Number == "" {
		return nil, nil, fmt.Errorf("%w: number is required", ErrBadRequest)
	}
	num, ok := new(big.Int).SetString(a.Number.String(), 10)
	if !ok || num.Sign() <= 0 {
		return nil, nil, fmt.Errorf("%w: number must be a positive integer", ErrBadRequest)
	}
	if err := d.checkCRLNumber(is, num); err != nil {
		return nil, nil, err
	}
	this, next, err := updateTimes(a, now)
	if err != nil {
		return nil, nil, err
	}
	var revoked []ca.Revoked
	for i, r := range a.Revoked {
		serial, err := parseSerial(r.Serial)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: revoked[%d]: %w", ErrBadRequest, i, err)
		}
		reason, err := ca.ParseReason(r.Reason)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: revoked[%d]: %w", ErrBadRequest, i, err)
		}
		if r.RevokedAt.IsZero() {
			return nil, nil, fmt.Errorf("%w: revoked[%d]: revoked_at is required", ErrBadRequest, i)
		}
		revoked = append(revoked, ca.Revoked{Serial: serial, RevokedAt: r.RevokedAt, Reason: reason})
	}
	der, err := is.CreateCRL(num, this, next, revoked, now)
	return num, der, err
}

func (d *Device) ocsp(is *ca.Issuer, a protocol.SignArgs, now time.Time) ([]byte, error) {
	if len(a.Responses) == 0 {
		return nil, fmt.Errorf("%w: responses is required", ErrBadRequest)
	}
	this, next, err := updateTimes(a, now)
	if err != nil {
		return nil, err
	}
	var entries []ca.OCSPEntry
	for i, r := range a.Responses {
		serial, err := parseSerial(r.Serial)
		if err != nil {
			return nil, fmt.Errorf("%w: responses[%d]: %w", ErrBadRequest, i, err)
		}
		reason, err := ca.ParseReason(r.Reason)
		if err != nil {
			return nil, fmt.Errorf("%w: responses[%d]: %w", ErrBadRequest, i, err)
		}
		e := ca.OCSPEntry{Serial: serial, Status: r.Status, Reason: reason}
		if r.RevokedAt != nil {
			e.RevokedAt = *r.RevokedAt
		}
		entries = append(entries, e)
	}
	return is.SignOCSP(entries, this, next, a.Nonce, now)
}

func updateTimes(a protocol.SignArgs, now time.Time) (this, next time.Time, err error) {
	this = now.UTC().Truncate(time.Second)
	if a.ThisUpdate != nil {
		this = *a.ThisUpdate
	}
	if a.NextUpdate == nil {
		return this, next, fmt.Errorf("%w: next_update is required", ErrBadRequest)
	}
	return this, *a.NextUpdate, nil
}

func parseSerial(s string) (*big.Int, error) {
	s = strings.TrimPrefix(strings.ToLower(s), "0x")
	n, ok := new(big.Int).SetString(s, 16)
	if !ok || n.Sign() <= 0 || n.BitLen() > 159 {
		return nil, fmt.Errorf("serial %q must be a positive hex number of at most 20 octets", s)
	}
	return n, nil
}

func hashOf(name string) (crypto.Hash, error) {
	switch strings.ToLower(strings.ReplaceAll(name, "-", "")) {
	case "sha256":
		return crypto.SHA256, nil
	case "sha384":
		return crypto.SHA384, nil
	case "sha512":
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("%w: hash %q (want sha256, sha384 or sha512)", ErrBadRequest, name)
}

// profileOf turns the protocol's profile into the CA engine's, refusing unknown
// names rather than dropping them.
func profileOf(p *protocol.Profile) (ca.Profile, error) {
	var out ca.Profile
	if p == nil {
		return out, fmt.Errorf("%w: profile is required", ErrBadRequest)
	}
	bad := func(format string, args ...any) (ca.Profile, error) {
		return ca.Profile{}, fmt.Errorf("%w: profile: "+format, append([]any{ErrBadRequest}, args...)...)
	}
	if p.NotBefore != nil {
		out.NotBefore = *p.NotBefore
	}
	if p.NotAfter != nil {
		out.NotAfter = *p.NotAfter
	}
	if p.Validity != "" {
		v, err := time.ParseDuration(p.Validity)
		if err != nil || v <= 0 {
			return bad("validity %q is not a positive Go duration (e.g. 2160h)", p.Validity)
		}
		out.Validity = v
	}
	if p.Serial != "" {
		s, err := parseSerial(p.Serial)
		if err != nil {
			return bad("%v", err)
		}
		out.Serial = s
	}
	out.IsCA, out.MaxPathLen = p.IsCA, p.MaxPathLen
	if p.MaxPathLen != nil && !p.IsCA {
		return bad("max_path_len needs is_ca")
	}
	var err error
	if out.KeyUsage, err = ca.ParseKeyUsage(p.KeyUsage); err != nil {
		return ca.Profile{}, fmt.Errorf("%w: profile: %w", ErrBadRequest, err)
	}
	if out.ExtKeyUsage, err = ca.ParseExtKeyUsage(p.ExtKeyUsage); err != nil {
		return ca.Profile{}, fmt.Errorf("%w: profile: %w", ErrBadRequest, err)
	}
	out.DNSNames, out.EmailAddresses = p.DNSNames, p.EmailAddresses
	for _, s := range p.IPAddresses {
		ip := net.ParseIP(s)
		if ip == nil {
			return bad("ip_addresses: %q is not an IP address", s)
		}
		out.IPAddresses = append(out.IPAddresses, ip)
	}
	for _, s := range p.URIs {
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" {
			return bad("uris: %q is not an absolute URI", s)
		}
		out.URIs = append(out.URIs, u)
	}
	if p.IPAddresses != nil && out.IPAddresses == nil {
		out.IPAddresses = []net.IP{}
	}
	if p.URIs != nil && out.URIs == nil {
		out.URIs = []*url.URL{}
	}
	out.CRLDistributionPoints, out.OCSPServers, out.IssuingCertificateURLs = p.CRLDistributionPoints, p.OCSPServers, p.IssuingCertificateURLs
	return out, nil
}

// digestHex is the SHA-256 of what was signed, for the audit trail.
func digestHex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
