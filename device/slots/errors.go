// Package slots holds the HSMs the appliance knows (Registry) and the lifecycle of
// the CA key slots on them (Slots): provision, self-sign or CSR, import of the signed
// certificate, clear. It checks and records; it knows nothing of MQTT, requests or
// the audit trail, which are the device's.
package slots

import "errors"

// Errors of the slot lifecycle, beside the hsm package's (offline, not found, PIN ...)
// and the ca package's (key mismatch, not a CA, chain ...).
var (
	// ErrBadRequest is a missing or invalid argument.
	ErrBadRequest = errors.New("bad request")
	// ErrConflict is a command that does not fit the slot's state.
	ErrConflict = errors.New("conflict")
)
