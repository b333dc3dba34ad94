package protocol

import (
	"bytes"
	"encoding/json"
	"strings"
)

// UnmarshalJSON reads slot.import_cert's arguments strictly, as DecodeArgs would,
// and takes chain either as one PEM bundle string or as an array of PEM strings:
// a JSON client naturally sends a list.
func (a *ImportCertArgs) UnmarshalJSON(b []byte) error {
	var in struct {
		SlotID      string          `json:"slot_id"`
		Certificate string          `json:"certificate"`
		Chain       json.RawMessage `json:"chain"`
	}
	// The caller's decoder options do not reach an Unmarshaler, so unknown
	// fields are refused here again.
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return err
	}
	chain, err := pemBundle(in.Chain)
	if err != nil {
		return err
	}
	*a = ImportCertArgs{SlotID: in.SlotID, Certificate: in.Certificate, Chain: chain}
	return nil
}

// argError is a decoding problem an Unmarshaler describes itself; its message
// never holds the input.
type argError string

func (e argError) Error() string { return string(e) }

const errChainType = argError(`field "chain" must be a PEM string or an array of PEM strings`)

// pemBundle joins a chain given as a string, an array of strings or null into one
// PEM bundle.
func pemBundle(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	if raw[0] != '[' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", errChainType
		}
		return s, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", errChainType
	}
	var sb strings.Builder
	for _, p := range list {
		sb.WriteString(p)
		if p != "" && !strings.HasSuffix(p, "\n") {
			sb.WriteByte('\n')
		}
	}
	return sb.String(), nil
}
