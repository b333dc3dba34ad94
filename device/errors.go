package device

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/iot-hsm/iot-hsm/ca"

	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
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
	msg := replyMessage(code, err.Error())
	if code == protocol.CodeInternal {
		msg = "internal error; see the appliance log"
	}
	return &protocol.Error{Code: code, Message: msg, Details: details}
}

// codeWords are the sentinels' texts that only repeat the reply code when they lead
// the message ("bad_request: bad request: ...").
var codeWords = map[string]string{
	protocol.CodeBadRequest:   "bad request: ",
	protocol.CodeConflict:     "conflict: ",
	protocol.CodeNotFound:     "not found: ",
	protocol.CodeUnsupported:  "unsupported: ",
	protocol.CodePolicyDenied: "policy denied: ",
	protocol.CodeHSMOffline:   "hsm offline: ",
	protocol.CodePINRequired:  "PIN required: ",
	protocol.CodeBusy:         "busy: ",
}

// replyMessage drops what the reader already has from the code, and the Go package
// prefixes ("ca: ") that say where an error was made, not what is wrong.
func replyMessage(code, msg string) string {
	msg = strings.TrimPrefix(msg, "ca: ")
	msg = strings.TrimPrefix(msg, codeWords[code])
	return strings.ReplaceAll(msg, ": ca: ", ": ")
}
