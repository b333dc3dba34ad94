// Package protocol is the MQTT contract (docs/protocol.md) in Go types:
// topics, the request and reply envelope, error codes, command arguments and results,
// and the status document. The daemon and the console both speak it; it knows nothing
// of HSMs or of the MQTT client.
package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// MaxPayload is the largest message the device accepts.
const MaxPayload = 128 << 10

// DefaultRoot is the topic root when none is configured.
const DefaultRoot = "iot-hsm"

// Commands.
const (
	CmdStatus        = "status"
	CmdHSMList       = "hsm.list"
	CmdHSMSetPIN     = "hsm.set_pin"
	CmdSlotProvision = "slot.provision"
	CmdSlotSelfSign  = "slot.selfsign"
	CmdSlotCSR       = "slot.csr"
	CmdSlotImport    = "slot.import_cert"
	CmdSlotShow      = "slot.show"
	CmdSlotClear     = "slot.clear"
	CmdSign          = "sign"
	CmdAuditTail     = "audit.tail"
	CmdReload        = "reload"
	CmdRestart       = "restart"
	CmdOTAUpdate     = "ota.update"
	CmdOTAStatus     = "ota.status"
)

// Error codes.
const (
	CodeBadRequest     = "bad_request"
	CodeUnknownCommand = "unknown_command"
	CodeNotFound       = "not_found"
	CodeConflict       = "conflict"
	CodeHSMOffline     = "hsm_offline"
	CodePINRequired    = "pin_required"
	CodePINIncorrect   = "pin_incorrect"
	CodePINBlocked     = "pin_blocked"
	CodeBusy           = "busy"
	CodeExpired        = "expired"
	CodeUnauthorized   = "unauthorized"
	CodePolicyDenied   = "policy_denied"
	CodeUnsupported    = "unsupported"
	CodeInternal       = "internal"
	// CodeClaimed: another member of the fleet serving the CA topic holds the
	// request's id, or may hold it (claims lost with the broker's state).
	CodeClaimed = "claimed"
)

// Request is the envelope of every command.
type Request struct {
	ID        string          `json:"id"`
	ReplyTo   string          `json:"reply_to,omitempty"`
	ExpiresAt *time.Time      `json:"expires_at,omitempty"`
	Args      json.RawMessage `json:"args,omitempty"`
}

// Reply is the envelope of every answer.
type Reply struct {
	ID       string          `json:"id"`
	Cmd      string          `json:"cmd"`
	OK       bool            `json:"ok"`
	Replayed bool            `json:"replayed,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *Error          `json:"error,omitempty"`
}

// Error is a failed reply's error; it is also a Go error, so clients can return it.
type Error struct {
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf makes an *Error with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ValidID reports whether id is 1..128 characters of [A-Za-z0-9._:-].
func ValidID(id string) bool {
	if len(id) < 1 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// DecodeRequest parses a request envelope. On failure the returned Request still
// carries the id when one could be read, so the error reply can name it.
func DecodeRequest(payload []byte) (Request, *Error) {
	var req Request
	if len(payload) > MaxPayload {
		return peekID(payload), Errorf(CodeBadRequest, "payload of %d bytes exceeds the %d byte limit", len(payload), MaxPayload)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return peekID(payload), Errorf(CodeBadRequest, "malformed request: %s", jsonProblem(err))
	}
	if dec.More() {
		return peekID(payload), Errorf(CodeBadRequest, "malformed request: data after the JSON object")
	}
	if !ValidID(req.ID) {
		id := req.ID
		if !ValidID(id) {
			id = ""
		}
		return Request{ID: id}, Errorf(CodeBadRequest, "id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
	}
	if req.ReplyTo != "" && (strings.ContainsAny(req.ReplyTo, "+#\x00") || len(req.ReplyTo) > 512) {
		// The refusal goes to the device's own reply topic: a wildcard is no
		// place to publish to.
		return Request{ID: req.ID}, Errorf(CodeBadRequest, "reply_to must be a topic name without wildcards")
	}
	return req, nil
}

// peekID reads just the id (and reply_to) of a message that is otherwise unusable:
// it walks the top-level object token by token, so an id that comes before the
// broken part of a malformed message is still found.
func peekID(payload []byte) Request {
	var req Request
	dec := json.NewDecoder(bytes.NewReader(payload))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return req
	}
	for {
		key, err := dec.Token()
		if err != nil {
			break
		}
		name, ok := key.(string)
		if !ok {
			break
		}
		switch name {
		case "id", "reply_to":
			v, err := dec.Token()
			if err != nil {
				return finishPeek(req)
			}
			if s, ok := v.(string); ok && name == "id" {
				req.ID = s
			} else if ok {
				req.ReplyTo = s
			}
			continue
		}
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			break
		}
	}
	return finishPeek(req)
}

func finishPeek(req Request) Request {
	if !ValidID(req.ID) {
		return Request{}
	}
	if strings.ContainsAny(req.ReplyTo, "+#\x00") || len(req.ReplyTo) > 512 {
		req.ReplyTo = ""
	}
	return req
}

// jsonProblem describes a decoding error without echoing the input (which may hold
// a PIN or a key).
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var ae argError
	switch {
	case errors.As(err, &ae):
		return ae.Error()
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s", te.Field, te.Type)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "incomplete JSON"
	}
	return "invalid JSON"
}

// DecodeArgs decodes a command's arguments strictly: unknown fields are refused,
// never silently dropped.
func DecodeArgs(raw json.RawMessage, v any) *Error {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		raw = json.RawMessage("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(CodeBadRequest, "args: %s", jsonProblem(err))
	}
	return nil
}

// Fingerprint identifies a request's content, so the same id with other content can
// be told from a redelivery. Whitespace in args does not change it. The fingerprint is
// kept on disk with the cached reply, so the secret arguments (a PIN, a management
// key, an imported private key and its password) are left out: an unkeyed hash of a
// 6-digit PIN is the PIN to anyone holding a copy of the state file.
func Fingerprint(cmd string, args json.RawMessage) []byte {
	var compact bytes.Buffer
	if secretCommands[cmd] {
		args = withoutSecrets(args)
	}
	if json.Compact(&compact, args) != nil {
		compact.Write(args)
	}
	h := sha256.New()
	h.Write([]byte(cmd))
	h.Write([]byte{0})
	h.Write(compact.Bytes())
	return h.Sum(nil)
}

// secretCommands take secret arguments; secretFields are those arguments.
var (
	secretCommands = map[string]bool{CmdHSMSetPIN: true, CmdSlotProvision: true}
	secretFields   = []string{"pin", "so_pin", "management_key", "key_pem", "key_password"}
)

// withoutSecrets returns args without the secret fields, its keys sorted. Keys are
// compared as encoding/json matches them to struct fields (case-insensitively), so
// that no spelling of "pin" keeps it in. Arguments that are not an object are
// returned as they are: DecodeArgs refuses them, and nothing of them is stored.
func withoutSecrets(args json.RawMessage) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(args, &m) != nil {
		return args
	}
	for k := range m {
		for _, f := range secretFields {
			if strings.EqualFold(k, f) {
				delete(m, k)
			}
		}
	}
	out, err := json.Marshal(m)
	if err != nil {
		return args
	}
	return out
}
