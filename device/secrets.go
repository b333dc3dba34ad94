package device

import (
	"fmt"
	"log/slog"

	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// PINStore keeps the PINs an operator asked to persist (hsm.set_pin with persist),
// sealed at rest (package secrets). The device only saves and deletes; the daemon
// applies stored PINs at start-up.
type PINStore interface {
	// Save stores pin for the HSM, replacing an earlier one.
	Save(hsmID, pin string) error
	// Delete forgets the HSM's stored PIN; a missing one is no error.
	Delete(hsmID string) error
}

// checkPersist refuses, before anything reaches the token, what hsm.set_pin must
// never store: a management key or an SO PIN. A YubiKey's management key is the
// PIN-protected one kept on the card (or one from the configuration's
// management_key_file), so the appliance never needs to store one of its own.
func (d *Device) checkPersist(a protocol.HSMSetPINArgs) error {
	if !a.Persist {
		return nil
	}
	if a.ManagementKey != "" || a.SOPIN != "" {
		return fmt.Errorf("%w: persist stores the user PIN only: a management key or SO PIN is never stored on the appliance "+
			"(a YubiKey uses its PIN-protected management key, unlocked by the PIN); send them without persist", ErrBadRequest)
	}
	if d.opts.Secrets == nil {
		return fmt.Errorf("%w: persist: this appliance has no secrets store; set the PIN in the configuration", hsm.ErrUnsupported)
	}
	return nil
}

// keepPIN follows a PIN the token accepted: with persist it is sealed in the store;
// without, any PIN stored earlier for that HSM is deleted (the last hsm.set_pin
// decides whether a PIN is kept). A store failure is an error reply: the PIN is in
// use until the next restart but was not stored.
func (d *Device) keepPIN(a protocol.HSMSetPINArgs) error {
	if d.opts.Secrets == nil {
		return nil
	}
	if !a.Persist {
		if err := d.opts.Secrets.Delete(a.HSM); err != nil {
			slog.Error("stored PIN not deleted", "hsm", a.HSM, "err", err)
		}
		return nil
	}
	if err := d.opts.Secrets.Save(a.HSM, a.PIN); err != nil {
		slog.Error("PIN accepted by the token but not stored", "hsm", a.HSM, "err", err)
		return protocol.Errorf(protocol.CodeInternal,
			"the token accepted the PIN and it is in use until the appliance restarts, but it was not stored: %v", err)
	}
	slog.Info("PIN stored (sealed) for start-up", "hsm", a.HSM)
	return nil
}
