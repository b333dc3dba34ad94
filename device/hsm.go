package device

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"

	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/protocol"
)

func (d *Device) routeHSMList(j *job) (string, *protocol.Error) {
	j.run = func(ctx context.Context, _ *job) (any, error) { return d.hsmList(ctx), nil }
	return "", nil
}

// routeSetPIN runs hsm.set_pin on the worker of the HSM it names.
func (d *Device) routeSetPIN(j *job) (string, *protocol.Error) {
	var a protocol.HSMSetPINArgs
	if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
		return "", e
	}
	if a.HSM == "" || a.PIN == "" {
		return "", protocol.Errorf(protocol.CodeBadRequest, "hsm and pin are required")
	}
	if e := d.knownHSM(a.HSM); e != nil {
		return "", e
	}
	j.run = func(ctx context.Context, _ *job) (any, error) { return d.setPIN(ctx, a) }
	return a.HSM, nil
}

func (d *Device) setPIN(ctx context.Context, a protocol.HSMSetPINArgs) (any, error) {
	tok, err := d.reg.Token(a.HSM)
	if err != nil {
		return nil, err
	}
	if err := d.checkPersist(a); err != nil {
		return nil, err
	}
	if a.SOPIN != "" {
		// Checking it could only cost one of its tries: nothing here uses it.
		return nil, fmt.Errorf("%w: so_pin: the appliance never needs a security officer PIN or PUK; send the user PIN only", ErrBadRequest)
	}
	var mgmtKey []byte
	if a.ManagementKey != "" {
		if _, ok := tok.(hsm.ManagementKeyer); !ok {
			return nil, fmt.Errorf("%w: management_key: %s has no management key", ErrBadRequest, a.HSM)
		}
		if mgmtKey, err = hex.DecodeString(a.ManagementKey); err != nil || len(mgmtKey) != 16 && len(mgmtKey) != 24 && len(mgmtKey) != 32 {
			return nil, fmt.Errorf("%w: management_key must be 16, 24 or 32 bytes in hex", ErrBadRequest)
		}
	}
	if err := lastTryGuard(ctx, tok, a); err != nil {
		return nil, err
	}
	defer d.PublishStatus()
	if err := d.tryPIN(ctx, tok, a, mgmtKey); err != nil {
		return nil, err
	}
	if err := d.keepPIN(a); err != nil {
		return nil, err
	}
	return protocol.SetPINResult{HSM: a.HSM, PIN: pinStatus(tok.Info().PIN)}, nil
}

// lastTryGuard refuses to present a PIN that, if wrong, would block the token,
// unless the request says force: an unblock needs the PUK or SO PIN, which the
// appliance never holds.
func lastTryGuard(ctx context.Context, tok hsm.Token, a protocol.HSMSetPINArgs) error {
	pc, ok := tok.(hsm.PINCounter)
	if !ok {
		return nil
	}
	n, err := pc.PINRetries(ctx)
	switch {
	case err != nil:
		return err
	case n == 0:
		return &hsm.PINError{Token: a.HSM, Retries: 0}
	case n == 1 && !a.Force:
		e := protocol.Errorf(protocol.CodeConflict,
			"%s has 1 PIN try left and a wrong PIN would block it; nothing was tried. Check the PIN and send it again with force",
			a.HSM)
		e.Details = map[string]any{"retries": 1}
		return e
	}
	return nil
}

// tryPIN has the token check the PIN (and the management key, when one is given).
// A refused PIN leaves the PIN the token already works with in use.
func (d *Device) tryPIN(ctx context.Context, tok hsm.Token, a protocol.HSMSetPINArgs, mgmtKey []byte) error {
	err := d.checkPIN(ctx, tok, a, mgmtKey)
	var pe *hsm.PINError
	if errors.As(err, &pe) {
		slog.Warn("hsm.set_pin: the token refused the PIN", "hsm", a.HSM, "retries", pe.Retries,
			"working_pin_kept", tok.Info().PIN.Set)
	}
	return err
}

func (d *Device) checkPIN(ctx context.Context, tok hsm.Token, a protocol.HSMSetPINArgs, mgmtKey []byte) error {
	if mgmtKey != nil {
		// The card checks the PIN and the key together, before either is kept; a
		// wrong PIN here is the one try this request costs, Login below then
		// presents a PIN the card has just accepted.
		if err := tok.(hsm.ManagementKeyer).SetManagementKey(ctx, a.PIN, mgmtKey); err != nil {
			return err
		}
	}
	return hsm.Login(ctx, tok, a.PIN)
}

func pinStatus(p hsm.PINStatus) protocol.PINStatus {
	s := protocol.PINStatus{Set: p.Set}
	if p.Retries >= 0 {
		r := p.Retries
		s.Retries = &r
	}
	return s
}

func (d *Device) hsmList(ctx context.Context) protocol.HSMListResult {
	res := protocol.HSMListResult{HSMs: []protocol.HSM{}}
	for _, t := range d.reg.Tokens() {
		info := t.Info()
		h := protocol.HSM{ID: info.ID, Kind: string(info.Kind), Model: info.Model, Serial: info.Serial,
			Present: info.Present, PIN: pinStatus(info.PIN), Slots: []protocol.HSMSlot{}}
		slots, err := t.Slots(ctx)
		if err != nil {
			h.SlotsError = toProtocolError(err).Message
		}
		for _, s := range slots {
			h.Slots = append(h.Slots, protocol.HSMSlot{Slot: s.Slot, Occupied: s.Occupied, KeyType: string(s.KeyType), Label: s.Label})
		}
		res.HSMs = append(res.HSMs, h)
	}
	return res
}
