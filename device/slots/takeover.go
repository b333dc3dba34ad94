package slots

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/store"
)

// maxChain bounds the walk up a recovered chain: a loop of cross-signed
// certificates must not keep the worker busy.
const maxChain = 8

// takeover is what mode existing finds on the token beside the key.
type takeover struct {
	cert  *x509.Certificate // nil: the slot stays key_ready
	chain []*x509.Certificate
	note  string
}

// takeOver reads the certificate the appliance stored next to the key, so a slot
// taken over on a fresh state directory (a rebuilt or migrated appliance) needs no
// copy of it. The certificate is taken only when it is a CA certificate for this
// key and valid now; its chain is recovered from the certificates of the token's
// other slots and of the other provisioned slots.
func (s *Slots) takeOver(ctx context.Context, tok hsm.Token, slotID, slot string, pub crypto.PublicKey) (takeover, error) {
	cert, err := hsm.Certificate(ctx, tok, slot)
	switch {
	case errors.Is(err, hsm.ErrUnsupported), errors.Is(err, hsm.ErrNotFound):
		return takeover{}, nil
	case err != nil:
		return takeover{}, err
	}
	candidates, err := s.knownCAs(slotID)
	if err != nil {
		return takeover{}, err
	}
	candidates = append(candidates, tokenCerts(ctx, tok, slot)...)
	chain, complete := buildChain(cert, candidates)
	if !complete {
		chain = nil
	}
	err = ca.CheckImport(cert, chain, nil, pub, s.now())
	switch {
	case err == nil && complete:
		return takeover{cert: cert, chain: chain, note: "certificate taken over from the token" + chainNote(chain)}, nil
	case errors.Is(err, ca.ErrChain) && !complete:
		return takeover{cert: cert, note: "certificate taken over from the token; its issuer's certificate is neither on the token " +
			"nor in another slot, so the chain is empty: give it with slot.import_cert"}, nil
	default:
		return takeover{note: fmt.Sprintf("the certificate on the token was not taken over: %v", err)}, nil
	}
}

func chainNote(chain []*x509.Certificate) string {
	if len(chain) == 0 {
		return ""
	}
	return fmt.Sprintf(", with a chain of %d certificates found on the token or in other slots", len(chain))
}

// apply puts what was taken over into the new slot record.
func (t takeover) apply(rec *store.Slot) {
	if t.note != "" {
		rec.Note = t.note
	}
	if t.cert == nil {
		return
	}
	rec.State, rec.Certificate = store.Provisioned, string(ca.EncodeCertificatePEM(t.cert))
	if len(t.chain) > 0 {
		rec.Chain = string(ca.EncodeCertificatesPEM(t.chain))
	}
}

// tokenCerts are the certificates stored in the token's other slots; one that
// cannot be read is skipped (it only may have been an issuer).
func tokenCerts(ctx context.Context, tok hsm.Token, except string) []*x509.Certificate {
	infos, err := tok.Slots(ctx)
	if err != nil {
		slog.Warn("listing the token's slots for a chain", "hsm", tok.Info().ID, "err", err)
		return nil
	}
	var out []*x509.Certificate
	for _, in := range infos {
		if in.Slot == except || !in.HasCert {
			continue
		}
		if c, err := hsm.Certificate(ctx, tok, in.Slot); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// buildChain walks from cert up through the candidates, by name and signature,
// to a self-signed certificate; complete says whether it got there.
func buildChain(cert *x509.Certificate, candidates []*x509.Certificate) (chain []*x509.Certificate, complete bool) {
	cur := cert
	for range maxChain {
		if selfSigned(cur) {
			return chain, true
		}
		next := issuerOf(cur, candidates)
		if next == nil {
			return chain, false
		}
		chain = append(chain, next)
		cur = next
	}
	return chain, false
}

func issuerOf(c *x509.Certificate, candidates []*x509.Certificate) *x509.Certificate {
	for _, p := range candidates {
		if bytes.Equal(p.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(p) == nil && !p.Equal(c) {
			return p
		}
	}
	return nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}
