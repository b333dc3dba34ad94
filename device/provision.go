package device

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// The slot commands: the lifecycle of package slots, run on the worker of the
// slot's HSM, with the events, CA topics and status that follow a change.

func (d *Device) routeProvision(j *job) (string, *protocol.Error) {
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
	j.run = func(ctx context.Context, _ *job) (any, error) { return d.provision(ctx, a) }
	j.slotID, j.rec.Kind = a.HSM+"/"+a.Slot, a.Mode
	return a.HSM, nil
}

func (d *Device) routeSelfSign(j *job) (string, *protocol.Error) {
	a, e := provisioningCertArgs(j)
	if e != nil {
		return "", e
	}
	j.run = func(ctx context.Context, j *job) (any, error) { return d.selfSign(ctx, j, a) }
	j.slotID = a.SlotID
	return d.slotHSM(a.SlotID)
}

func (d *Device) routeCSR(j *job) (string, *protocol.Error) {
	a, e := provisioningCertArgs(j)
	if e != nil {
		return "", e
	}
	j.run = func(ctx context.Context, _ *job) (any, error) { return d.csr(ctx, a) }
	j.slotID = a.SlotID
	return d.slotHSM(a.SlotID)
}

// provisioningCertArgs decodes the arguments of slot.selfsign and slot.csr.
func provisioningCertArgs(j *job) (protocol.ProvisioningCertArgs, *protocol.Error) {
	var a protocol.ProvisioningCertArgs
	if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
		return a, e
	}
	if a.ProvisioningCert == "" {
		return a, protocol.Errorf(protocol.CodeBadRequest, "provisioning_cert is required")
	}
	return a, nil
}

func (d *Device) routeImport(j *job) (string, *protocol.Error) {
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
}

// routeShow runs slot.show on the control worker: it reads the record only.
func (d *Device) routeShow(j *job) (string, *protocol.Error) {
	var a protocol.SlotIDArgs
	if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
		return "", e
	}
	if _, e := d.slotHSM(a.SlotID); e != nil {
		return "", e
	}
	j.run = func(context.Context, *job) (any, error) { return d.show(a.SlotID) }
	return "", nil
}

func (d *Device) routeClear(j *job) (string, *protocol.Error) {
	var a protocol.ClearArgs
	if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
		return "", e
	}
	j.run = func(ctx context.Context, _ *job) (any, error) { return d.clear(ctx, a) }
	j.slotID = a.SlotID
	return d.slotHSM(a.SlotID)
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
		Attestation: rec.Attestation, Note: rec.Note, State: string(rec.State)}, nil
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
	if rec.State == store.Provisioned {
		out.LastCRLNumber = d.lastCRLNumber(rec.CAID)
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
