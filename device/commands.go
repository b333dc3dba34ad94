package device

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// route decodes the command's arguments, picks its handler and returns the HSM whose
// worker runs it ("" for the control worker, for commands that touch no token).
func (d *Device) route(j *job) (string, *protocol.Error) {
	switch j.cmd {
	case protocol.CmdStatus:
		j.run = func(context.Context, *job) (any, error) { return d.Status(), nil }
		return "", nil
	case protocol.CmdHSMList:
		j.run = func(ctx context.Context, _ *job) (any, error) { return d.hsmList(ctx), nil }
		return "", nil
	case protocol.CmdHSMSetPIN:
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
	case protocol.CmdSlotProvision:
		var a protocol.ProvisionArgs
		if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
			return "", e
		}
		if a.HSM == "" || a.Slot == "" || a.Mode == "" {
			return "", protocol.Errorf(protocol.CodeBadRequest, "hsm, slot and mode are required")
		}
		if e := d.knownHSM(a.HSM); e != nil {
			return "", e
		}
		j.deadline = 3 * time.Minute // RSA-4096 generation on a YubiKey takes minutes
		j.run = func(ctx context.Context, _ *job) (any, error) { return d.provision(ctx, a) }
		j.slotID, j.rec.Kind = a.HSM+"/"+a.Slot, a.Mode
		return a.HSM, nil
	case protocol.CmdSlotSelfSign, protocol.CmdSlotCSR:
		var a protocol.ProvisioningCertArgs
		if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
			return "", e
		}
		if a.ProvisioningCert == "" {
			return "", protocol.Errorf(protocol.CodeBadRequest, "provisioning_cert is required")
		}
		if j.cmd == protocol.CmdSlotSelfSign {
			j.run = func(ctx context.Context, j *job) (any, error) { return d.selfSign(ctx, j, a) }
		} else {
			j.run = func(ctx context.Context, _ *job) (any, error) { return d.csr(ctx, a) }
		}
		j.slotID = a.SlotID
		return d.slotHSM(a.SlotID)
	case protocol.CmdSlotImport:
		var a protocol.ImportCertArgs
		if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
			return "", e
		}
		if a.Certificate == "" {
			return "", protocol.Errorf(protocol.CodeBadRequest, "certificate is required")
		}
		j.run = func(ctx context.Context, j *job) (any, error) { return d.importCert(ctx, j, a) }
		j.slotID = a.SlotID
		return d.slotHSM(a.SlotID)
	case protocol.CmdSlotShow:
		var a protocol.SlotIDArgs
		if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
			return "", e
		}
		if _, e := d.slotHSM(a.SlotID); e != nil {
			return "", e
		}
		j.run = func(context.Context, *job) (any, error) { return d.show(a.SlotID) }
		return "", nil
	case protocol.CmdSlotClear:
		var a protocol.ClearArgs
		if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
			return "", e
		}
		j.run = func(ctx context.Context, _ *job) (any, error) { return d.clear(ctx, a) }
		j.slotID = a.SlotID
		return d.slotHSM(a.SlotID)
	case protocol.CmdSign:
		return d.routeSign(j)
	case protocol.CmdReload, protocol.CmdRestart:
		return d.routeLifecycle(j)
	case protocol.CmdOTAUpdate, protocol.CmdOTAStatus:
		return d.routeOTA(j)
	case protocol.CmdAuditTail:
		var a protocol.AuditTailArgs
		if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
			return "", e
		}
		if a.N < 0 || a.N > 256 {
			return "", protocol.Errorf(protocol.CodeBadRequest, "n must be 0..256 (0: all kept in memory)")
		}
		j.run = func(context.Context, *job) (any, error) { return d.auditTail(a.N) }
		return "", nil
	}
	return "", protocol.Errorf(protocol.CodeUnknownCommand, "unknown command %q", j.cmd)
}

// slotHSM checks that a slot has a record and returns its HSM, so the job runs on
// that token's worker. An unknown slot is answered at intake: workers, cached replies
// and audit records are for requests that can do something, and the HSM ids with a
// slot record are a bounded set that no request can grow.
func (d *Device) slotHSM(slotID string) (string, *protocol.Error) {
	if slotID == "" {
		return "", protocol.Errorf(protocol.CodeBadRequest, "slot_id is required")
	}
	hsmID, _, err := slots.SplitSlotID(slotID)
	if err != nil {
		return "", toProtocolError(err)
	}
	if _, err := d.store.Slot(slotID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return "", protocol.Errorf(protocol.CodeNotFound, "slot %s is not provisioned (slot.provision first; hsm.list shows the HSMs)", slotID)
		}
		return "", toProtocolError(err)
	}
	// The HSM of a slot record may be absent (a YubiKey not plugged in since the
	// start); its worker answers hsm_offline, or clears the record.
	return hsmID, nil
}

// knownHSM answers not_found at intake for an HSM id no backend has shown: workers
// exist only for the HSMs the appliance has.
func (d *Device) knownHSM(id string) *protocol.Error {
	if _, err := d.reg.Token(id); err != nil {
		return protocol.Errorf(protocol.CodeNotFound, "no HSM %q on this appliance (hsm.list shows the HSMs)", id)
	}
	return nil
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

func (d *Device) provision(ctx context.Context, a protocol.ProvisionArgs) (any, error) {
	var kt hsm.KeyType
	if a.Mode == slots.ModeGenerate {
		var err error
		if kt, err = hsm.ParseKeyType(a.KeyType); err != nil {
			// An unknown name is a bad request; unsupported is for a known type
			// this HSM cannot do.
			return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
		}
	} else if a.KeyType != "" {
		return nil, fmt.Errorf("%w: key_type applies to mode generate only", ErrBadRequest)
	}
	if a.Mode != slots.ModeImport && (a.KeyPEM != "" || a.KeyPassword != "") {
		return nil, fmt.Errorf("%w: key_pem applies to mode import only", ErrBadRequest)
	}
	rec, err := d.slots.Provision(ctx, slots.ProvisionArgs{
		HSM: a.HSM, Slot: a.Slot, Mode: a.Mode, KeyType: kt, KeyPEM: []byte(a.KeyPEM),
		KeyPassword: []byte(a.KeyPassword), Label: a.Label, Overwrite: a.Overwrite,
	})
	if err != nil {
		return nil, err
	}
	d.slotChanged(rec.ID, rec.State)
	return protocol.ProvisionResult{SlotID: rec.ID, PublicKey: rec.PublicKey, KeyType: rec.KeyType, CAID: rec.CAID,
		Attestation: rec.Attestation, Note: rec.Note}, nil
}

func (d *Device) selfSign(ctx context.Context, j *job, a protocol.ProvisioningCertArgs) (any, error) {
	cert, err := d.slots.SelfSign(ctx, a.SlotID, []byte(a.ProvisioningCert))
	if err != nil {
		return nil, err
	}
	j.rec.Subject, j.rec.Serial = cert.Subject.String(), hex.EncodeToString(cert.SerialNumber.Bytes())
	d.slotChanged(a.SlotID, store.Provisioned)
	return protocol.CertificateResult{Certificate: string(ca.EncodeCertificatePEM(cert))}, nil
}

func (d *Device) csr(ctx context.Context, a protocol.ProvisioningCertArgs) (any, error) {
	csr, err := d.slots.CSR(ctx, a.SlotID, []byte(a.ProvisioningCert))
	if err != nil {
		return nil, err
	}
	d.slotChanged(a.SlotID, store.CSRPending)
	return protocol.CSRResult{CSR: string(ca.EncodeCSRPEM(csr))}, nil
}

func (d *Device) importCert(ctx context.Context, j *job, a protocol.ImportCertArgs) (any, error) {
	cert, err := d.slots.ImportCert(ctx, a.SlotID, []byte(a.Certificate), []byte(a.Chain))
	if err != nil {
		return nil, err
	}
	j.rec.Subject, j.rec.Serial = cert.Subject.String(), hex.EncodeToString(cert.SerialNumber.Bytes())
	d.slotChanged(a.SlotID, store.Provisioned)
	return d.show(a.SlotID)
}

func (d *Device) show(slotID string) (any, error) {
	rec, err := d.slots.Show(slotID)
	if err != nil {
		return nil, err
	}
	out := protocol.SlotShow{
		SlotID: rec.ID, HSM: rec.HSM, State: string(rec.State), Connected: d.slotConnected(rec),
		KeyType: rec.KeyType, Label: rec.Label, CAID: rec.CAID, PublicKey: rec.PublicKey,
		Certificate: rec.Certificate, Chain: rec.Chain, CSR: rec.CSR, Attestation: rec.Attestation,
	}
	if c, err := ca.ParseCertificatePEM([]byte(rec.Certificate)); err == nil {
		out.Subject = c.Subject.String()
		na := c.NotAfter.UTC()
		out.NotAfter = &na
	}
	return out, nil
}

func (d *Device) clear(ctx context.Context, a protocol.ClearArgs) (any, error) {
	if err := d.slots.Clear(ctx, a.SlotID, a.DestroyKey); err != nil {
		return nil, err
	}
	d.slotChanged(a.SlotID, store.Empty)
	return protocol.ClearResult{SlotID: a.SlotID, State: string(store.Empty), KeyDestroyed: a.DestroyKey}, nil
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

// toProtocolError maps the typed errors of every layer to the protocol's codes.
// Messages come from our own errors, which never carry PINs or key material.
func toProtocolError(err error) *protocol.Error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe
	}
	code := protocol.CodeInternal
	var details map[string]any
	switch {
	case errors.Is(err, hsm.ErrPINBlocked):
		code = protocol.CodePINBlocked
	case errors.Is(err, hsm.ErrPINIncorrect):
		code = protocol.CodePINIncorrect
		if r := hsm.PINRetries(err); r >= 0 {
			details = map[string]any{"retries": r}
		}
	case errors.Is(err, hsm.ErrPINRequired):
		code = protocol.CodePINRequired
	case errors.Is(err, hsm.ErrOffline), errors.Is(err, context.DeadlineExceeded):
		code = protocol.CodeHSMOffline
	case errors.Is(err, hsm.ErrUnauthorized):
		code = protocol.CodeUnauthorized
	case errors.Is(err, hsm.ErrBusy):
		code = protocol.CodeBusy
	case errors.Is(err, ca.ErrPolicy):
		code = protocol.CodePolicyDenied
	case errors.Is(err, ErrConflict), errors.Is(err, hsm.ErrExists):
		code = protocol.CodeConflict
	case errors.Is(err, hsm.ErrNotFound), errors.Is(err, store.ErrNotFound):
		code = protocol.CodeNotFound
	case errors.Is(err, ErrBadRequest), errors.Is(err, hsm.ErrInvalidSlot), errors.Is(err, ca.ErrProfile),
		errors.Is(err, ca.ErrBadPEM), errors.Is(err, ca.ErrKeyMismatch), errors.Is(err, ca.ErrNotCA),
		errors.Is(err, ca.ErrChain), errors.Is(err, ca.ErrNotValidNow), errors.Is(err, ca.ErrUnsupportedKey),
		errors.Is(err, hsm.ErrManagementKey):
		code = protocol.CodeBadRequest
	case errors.Is(err, hsm.ErrUnsupported):
		code = protocol.CodeUnsupported
	}
	msg := err.Error()
	if code == protocol.CodeInternal {
		msg = "internal error; see the appliance log"
	}
	return &protocol.Error{Code: code, Message: msg, Details: details}
}

// certOf parses a stored certificate PEM.
func certOf(pemText string) (*x509.Certificate, error) {
	return ca.ParseCertificatePEM([]byte(pemText))
}
