package hsm

import (
	"errors"
	"fmt"
)

// Errors every backend returns, wrapped with detail. Callers (the device core, the
// protocol layer) map them to reply codes with errors.Is, never by message.
var (
	ErrOffline       = errors.New("hsm offline")
	ErrNotFound      = errors.New("not found")
	ErrExists        = errors.New("already exists")
	ErrPINRequired   = errors.New("PIN required")
	ErrPINIncorrect  = errors.New("PIN incorrect")
	ErrPINBlocked    = errors.New("PIN blocked")
	ErrUnsupported   = errors.New("unsupported")
	ErrInvalidSlot   = errors.New("invalid slot name")
	ErrInvalidConfig = errors.New("invalid configuration")
	ErrUnauthorized  = errors.New("unauthorized") // the backend refused our credentials or their permissions
	ErrBusy          = errors.New("busy")         // the backend is rate limiting us: retry later
	ErrManagementKey = errors.New("management key refused")
)

// PINError reports a rejected PIN with the number of tries the token still allows, so
// an operator can stop before the token locks. Retries is -1 when the token does not
// say. It matches ErrPINIncorrect, or ErrPINBlocked when no tries are left.
type PINError struct {
	Token   string
	Retries int
}

func (e *PINError) Error() string {
	switch {
	case e.Retries == 0:
		return fmt.Sprintf("%s: PIN blocked", e.Token)
	case e.Retries > 0:
		return fmt.Sprintf("%s: PIN incorrect, %d tries left", e.Token, e.Retries)
	default:
		return fmt.Sprintf("%s: PIN incorrect", e.Token)
	}
}

func (e *PINError) Is(target error) bool {
	if e.Retries == 0 {
		return target == ErrPINBlocked
	}
	return target == ErrPINIncorrect
}

// PINRetries returns the tries left carried by err, or -1 when err carries none.
func PINRetries(err error) int {
	var pe *PINError
	if errors.As(err, &pe) {
		return pe.Retries
	}
	return -1
}
