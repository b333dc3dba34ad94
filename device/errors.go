package device

import (
	"fmt"

	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/hsm"
)

// Errors of the device core, beside the hsm package's (offline, not found, PIN ...)
// and the ca package's (key mismatch, not a CA, chain ...). The protocol layer maps
// all of them to reply codes with errors.Is.
var (
	// ErrBadRequest is a missing or invalid argument; it is the slot lifecycle's,
	// so the runtime's hooks and the slots report bad requests alike.
	ErrBadRequest = slots.ErrBadRequest
	// ErrConflict is a command that does not fit the slot's state.
	ErrConflict = slots.ErrConflict
)

// ErrNotFoundCA is a ca_id that no provisioned slot holds; it matches hsm.ErrNotFound.
var ErrNotFoundCA = fmt.Errorf("unknown CA: %w", hsm.ErrNotFound)
