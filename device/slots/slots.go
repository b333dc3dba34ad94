package slots

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/pemkey"
	"github.com/iot-hsm/iot-hsm/store"
)

// Slots runs the slot lifecycle of the provisioning wizard:
//
//	empty --provision--> key_ready --selfsign--> provisioned
//	key_ready --csr--> csr_pending --import_cert--> provisioned --import_cert--> provisioned
//	any --clear--> empty
//
// Each step checks the slot's state first and writes the new state in one store
// transaction only after the token work succeeded, so a failed step leaves the slot as
// it was.
type Slots struct {
	Store    *store.Store
	Registry *Registry
	Now      func() time.Time
}

func (s *Slots) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Provisioning modes.
const (
	ModeGenerate = "generate"
	ModeImport   = "import"
	ModeExisting = "existing"
)

// ProvisionArgs are the arguments of slot.provision.
type ProvisionArgs struct {
	HSM         string
	Slot        string
	Mode        string
	KeyType     hsm.KeyType
	KeyPEM      []byte
	KeyPassword []byte
	Label       string
	Overwrite   bool
}

// SplitSlotID splits "<hsm-id>/<slot>". HSM ids never hold a slash; slot names may
// (a Cloud KMS key/version), so the split is at the first one.
func SplitSlotID(id string) (hsmID, slot string, err error) {
	hsmID, slot, ok := strings.Cut(id, "/")
	if !ok || hsmID == "" || slot == "" {
		return "", "", fmt.Errorf("%w: slot_id %q is not <hsm-id>/<slot>", ErrBadRequest, id)
	}
	return hsmID, slot, nil
}

// Provision puts a key in a slot (generated on the token, imported from PEM, or one
// already there) and records the slot as key_ready, or as provisioned when an
// existing key comes with its CA certificate on the token.
func (s *Slots) Provision(ctx context.Context, a ProvisionArgs) (store.Slot, error) {
	tok, err := s.Registry.Token(a.HSM)
	if err != nil {
		return store.Slot{}, err
	}
	if a.Slot == "" || strings.Contains(a.Slot, "/") && a.Mode != ModeExisting {
		return store.Slot{}, fmt.Errorf("%w: slot %q: want a slot name of the HSM (a PIV slot such as 9c, a CKA_ID "+
			"such as 01, a Cloud KMS key name); a \"/\" only in an existing Cloud KMS key version", ErrBadRequest, a.Slot)
	}
	slotID := a.HSM + "/" + a.Slot
	if rec, err := s.Store.Slot(slotID); err == nil && rec.State != store.Empty && !a.Overwrite {
		return store.Slot{}, fmt.Errorf("%w: %s is %s: clear it first (slot.clear), or provision with overwrite "+
			"(slot.provision --overwrite) to replace its key", ErrConflict, slotID, rec.State)
	}

	var pub crypto.PublicKey
	switch a.Mode {
	case ModeGenerate:
		if a.KeyType == "" {
			return store.Slot{}, fmt.Errorf("%w: mode generate needs key_type: rsa2048, rsa3072, rsa4096, p256 or p384", ErrBadRequest)
		}
		if _, err := hsm.ParseKeyType(string(a.KeyType)); err != nil {
			return store.Slot{}, fmt.Errorf("%w: %v", ErrBadRequest, err)
		}
		pub, err = tok.Generate(ctx, a.Slot, a.KeyType, hsm.KeyOptions{Label: a.Label, Overwrite: a.Overwrite})
	case ModeImport:
		var key crypto.Signer
		key, err = pemkey.Parse(a.KeyPEM, a.KeyPassword)
		if err != nil {
			return store.Slot{}, fmt.Errorf("%w: key_pem: %w", ErrBadRequest, err)
		}
		defer pemkey.Wipe(key)
		pub, err = hsm.Import(ctx, tok, a.Slot, key, hsm.KeyOptions{Label: a.Label, Overwrite: a.Overwrite})
	case ModeExisting:
		pub, err = tok.PublicKey(ctx, a.Slot)
		if err == nil {
			err = checkPair(ctx, tok, a.Slot, pub)
		}
	default:
		return store.Slot{}, fmt.Errorf("%w: mode %q (want generate, import or existing)", ErrBadRequest, a.Mode)
	}
	if err != nil {
		return store.Slot{}, err
	}
	kt, err := hsm.KeyTypeOf(pub)
	if err != nil {
		return store.Slot{}, err
	}
	pubPEM, err := ca.EncodePublicKeyPEM(pub)
	if err != nil {
		return store.Slot{}, err
	}
	caID, err := ca.ID(pub)
	if err != nil {
		return store.Slot{}, err
	}
	attestation, note := attest(ctx, tok, a)
	var taken takeover
	if a.Mode == ModeExisting {
		if taken, err = s.takeOver(ctx, tok, slotID, a.Slot, pub); err != nil {
			return store.Slot{}, err
		}
	}
	now := s.now().UTC()
	return s.Store.UpdateSlot(slotID, func(rec *store.Slot, _ bool) error {
		*rec = store.Slot{
			ID: slotID, HSM: a.HSM, Slot: a.Slot, State: store.KeyReady, KeyType: string(kt),
			Label: a.Label, Mode: a.Mode, PublicKey: string(pubPEM), CAID: caID,
			Attestation: attestation, Note: note, CreatedAt: now, UpdatedAt: now, Request: requestID(ctx),
		}
		taken.apply(rec)
		return nil
	})
}

// attest fetches the attestation of a freshly generated key where the token can give
// one. A failed attestation does not undo the key (it is on the token now); the slot
// records why there is none, so the operator can decide.
func attest(ctx context.Context, tok hsm.Token, a ProvisionArgs) (chainPEM, note string) {
	at, ok := tok.(hsm.Attester)
	switch {
	case a.Mode == ModeImport:
		return "", "an imported key has no attestation: the token cannot vouch that it was never outside"
	case !ok || a.Mode != ModeGenerate:
		return "", ""
	}
	chain, err := at.Attest(ctx, a.Slot)
	if err != nil {
		slog.Warn("attestation failed", "hsm", a.HSM, "slot", a.Slot, "err", err)
		return "", "no attestation: " + err.Error()
	}
	return string(ca.EncodeCertificatesPEM(chain)), ""
}

// Signer loads the record and the token signer for a slot in one of the states.
func (s *Slots) Signer(ctx context.Context, slotID string, states ...store.State) (store.Slot, hsm.Token, crypto.Signer, error) {
	rec, err := s.Record(slotID, states...)
	if err != nil {
		return rec, nil, nil, err
	}
	tok, err := s.Registry.Token(rec.HSM)
	if err != nil {
		return rec, nil, nil, err
	}
	signer, err := tok.Signer(ctx, rec.Slot)
	if err != nil {
		return rec, nil, nil, err
	}
	// The token's key must still be the one the slot was provisioned with: a key
	// replaced behind the appliance's back must not sign under the old CA's name.
	if id, err := ca.ID(signer.Public()); err != nil || id != rec.CAID {
		return rec, nil, nil, fmt.Errorf("%w: the key in %s is not the one provisioned (ca_id changed)", ErrConflict, slotID)
	}
	return rec, tok, signer, nil
}

// Record returns the slot's record when it is in one of the states.
func (s *Slots) Record(slotID string, states ...store.State) (store.Slot, error) {
	if _, _, err := SplitSlotID(slotID); err != nil {
		return store.Slot{}, err
	}
	rec, err := s.Store.Slot(slotID)
	if errors.Is(err, store.ErrNotFound) {
		return rec, fmt.Errorf("%w: slot %s is not provisioned", hsm.ErrNotFound, slotID)
	}
	if err != nil {
		return rec, err
	}
	for _, st := range states {
		if rec.State == st {
			return rec, nil
		}
	}
	return rec, fmt.Errorf("%w: %s is %s%s", ErrConflict, slotID, rec.State, nextStep(slotID, rec.State))
}

// nextStep says what to run on a slot in state st before the refused command fits.
func nextStep(slotID string, st store.State) string {
	switch st {
	case store.Empty:
		return ": give it a key first (slot.provision)"
	case store.KeyReady:
		return ": it has no certificate yet; make it a root (slot.selfsign --slot-id " + slotID +
			") or an intermediate (slot.csr, then slot.import_cert)"
	case store.CSRPending:
		return ": it waits for its signed certificate (slot.import_cert --slot-id " + slotID + ")"
	case store.Provisioned:
		return ": it already has its certificate; slot.show shows it, slot.clear starts the slot again"
	}
	return ""
}

// SelfSign makes the slot a self-signed root from the provisioning certificate.
func (s *Slots) SelfSign(ctx context.Context, slotID string, provisioningPEM []byte) (*x509.Certificate, error) {
	tmpl, err := ca.ParseCertificatePEM(provisioningPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: provisioning_cert: %w", ErrBadRequest, err)
	}
	rec, tok, signer, err := s.Signer(ctx, slotID, store.KeyReady, store.CSRPending)
	if err != nil {
		return nil, err
	}
	cert, err := ca.SelfSign(tmpl, signer, s.now())
	if err != nil {
		return nil, err
	}
	if err := storeOnToken(ctx, tok, rec.Slot, cert); err != nil {
		return nil, err
	}
	return cert, s.update(ctx, slotID, func(r *store.Slot) {
		r.State, r.Certificate, r.Chain, r.CSR = store.Provisioned, string(ca.EncodeCertificatePEM(cert)), "", ""
	})
}

// CSR makes a certificate request for an intermediate CA from the provisioning
// certificate; the slot waits in csr_pending for the signed certificate.
func (s *Slots) CSR(ctx context.Context, slotID string, provisioningPEM []byte) (*x509.CertificateRequest, error) {
	tmpl, err := ca.ParseCertificatePEM(provisioningPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: provisioning_cert: %w", ErrBadRequest, err)
	}
	_, _, signer, err := s.Signer(ctx, slotID, store.KeyReady, store.CSRPending)
	if err != nil {
		return nil, err
	}
	csr, err := ca.CSR(tmpl, signer)
	if err != nil {
		return nil, err
	}
	return csr, s.update(ctx, slotID, func(r *store.Slot) {
		r.State, r.CSR = store.CSRPending, string(ca.EncodeCSRPEM(csr))
	})
}

// ImportCert associates a signed CA certificate with the slot key: after a CSR, or
// again after an update or a move to new hardware. It is checked before anything is
// written: same key, a CA certificate, valid now, chain verifies (with the given chain
// and the CA certificates of the other slots).
func (s *Slots) ImportCert(ctx context.Context, slotID string, certPEM, chainPEM []byte) (*x509.Certificate, error) {
	cert, err := ca.ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate: %w", ErrBadRequest, err)
	}
	var chain []*x509.Certificate
	if len(strings.TrimSpace(string(chainPEM))) > 0 {
		if chain, err = ca.ParseCertificatesPEM(chainPEM); err != nil {
			return nil, fmt.Errorf("%w: chain: %w", ErrBadRequest, err)
		}
	}
	rec, err := s.Record(slotID, store.KeyReady, store.CSRPending, store.Provisioned)
	if err != nil {
		return nil, err
	}
	pub, err := parsePublicKeyPEM(rec.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("slot %s: stored public key: %w", slotID, err)
	}
	known, err := s.knownCAs(slotID)
	if err != nil {
		return nil, err
	}
	if err := ca.CheckImport(cert, chain, known, pub, s.now()); err != nil {
		return nil, err
	}
	tok, err := s.Registry.Token(rec.HSM)
	if err != nil {
		return nil, err
	}
	if err := storeOnToken(ctx, tok, rec.Slot, cert); err != nil {
		return nil, err
	}
	return cert, s.update(ctx, slotID, func(r *store.Slot) {
		r.State, r.Certificate, r.CSR = store.Provisioned, string(ca.EncodeCertificatePEM(cert)), ""
		r.Chain = string(ca.EncodeCertificatesPEM(chain))
	})
}

func (s *Slots) update(ctx context.Context, slotID string, fn func(*store.Slot)) error {
	_, err := s.Store.UpdateSlot(slotID, func(r *store.Slot, _ bool) error {
		fn(r)
		r.UpdatedAt, r.Request = s.now().UTC(), requestID(ctx)
		return nil
	})
	return err
}

// requestKey carries the id of the request a slot change is made for.
type requestKey struct{}

// WithRequestID marks ctx as running request id: the slot records it changes name
// the request, which is how recovery tells whether an interrupted request landed.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestKey{}, id)
}

func requestID(ctx context.Context) string {
	id, _ := ctx.Value(requestKey{}).(string)
	return id
}

// knownCAs are the certificates (and chains) of the other provisioned slots: a root
// provisioned on this appliance lets its intermediates import without a chain.
func (s *Slots) knownCAs(except string) ([]*x509.Certificate, error) {
	recs, err := s.Store.Slots()
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, r := range recs {
		if r.ID == except || r.State != store.Provisioned {
			continue
		}
		for _, p := range []string{r.Certificate, r.Chain} {
			if strings.TrimSpace(p) == "" {
				continue
			}
			if certs, err := ca.ParseCertificatesPEM([]byte(p)); err == nil {
				out = append(out, certs...)
			}
		}
	}
	return out, nil
}

// storeOnToken writes the certificate next to the key where the token can hold one.
func storeOnToken(ctx context.Context, tok hsm.Token, slot string, cert *x509.Certificate) error {
	err := hsm.StoreCertificate(ctx, tok, slot, cert)
	if errors.Is(err, hsm.ErrUnsupported) {
		return nil
	}
	return err
}

// Show returns the slot's record.
func (s *Slots) Show(slotID string) (store.Slot, error) {
	return s.Record(slotID, store.Empty, store.KeyReady, store.CSRPending, store.Provisioned)
}

// Clear returns the slot to empty. The key is destroyed on the token only when asked:
// clearing a record must never lose a CA key by accident.
func (s *Slots) Clear(ctx context.Context, slotID string, destroyKey bool) error {
	rec, err := s.Show(slotID)
	if err != nil {
		return err
	}
	if destroyKey {
		tok, err := s.Registry.Token(rec.HSM)
		if err != nil {
			return err
		}
		if err := hsm.DeleteKey(ctx, tok, rec.Slot); err != nil && !errors.Is(err, hsm.ErrNotFound) {
			return err
		}
	}
	return s.Store.DeleteSlot(slotID)
}

func parsePublicKeyPEM(s string) (crypto.PublicKey, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PUBLIC KEY PEM")
	}
	return x509.ParsePKIXPublicKey(b.Bytes)
}

// checkPair makes sure the slot's private key is there and matches its public key.
func checkPair(ctx context.Context, tok hsm.Token, slot string, pub crypto.PublicKey) error {
	signer, err := tok.Signer(ctx, slot)
	if err != nil {
		return err
	}
	id1, err1 := ca.ID(signer.Public())
	id2, err2 := ca.ID(pub)
	if err1 != nil || err2 != nil || id1 != id2 {
		return fmt.Errorf("%w: the slot's private and public keys do not match", ErrConflict)
	}
	d := sha256.Sum256([]byte("iot-hsm pair check"))
	var opts crypto.SignerOpts = crypto.SHA256
	if _, err := signer.Sign(rand.Reader, d[:], opts); err != nil {
		return fmt.Errorf("%w: the slot's private key does not sign: %w", hsm.ErrNotFound, err)
	}
	return nil
}
