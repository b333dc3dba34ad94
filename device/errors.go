package device

import "errors"

// Errors of the device core, beside the hsm package's (offline, not found, PIN ...)
// and the ca package's (key mismatch, not a CA, chain ...). The protocol layer maps
// all of them to reply codes with errors.Is.
var (
	// ErrBadRequest is a missing or invalid argument.
	ErrBadRequest = errors.New("bad request")
	// ErrConflict is a command that does not fit the slot's state.
	ErrConflict = errors.New("conflict")
)
