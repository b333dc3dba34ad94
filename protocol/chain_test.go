package protocol

import (
	"strings"
	"testing"
)

const (
	pemA = "-----BEGIN CERTIFICATE-----\nQUFB\n-----END CERTIFICATE-----\n"
	pemB = "-----BEGIN CERTIFICATE-----\nQkJC\n-----END CERTIFICATE-----"
)

// A chain arrives as one PEM bundle or as a JSON array of PEM strings; both give
// the same bundle.
func TestImportCertChainForms(t *testing.T) {
	cases := map[string]string{
		"string":   `{"slot_id":"h/01","certificate":"c","chain":` + quote(pemA+pemB) + `}`,
		"array":    `{"slot_id":"h/01","certificate":"c","chain":[` + quote(pemA) + `,` + quote(pemB) + `]}`,
		"absent":   `{"slot_id":"h/01","certificate":"c"}`,
		"null":     `{"slot_id":"h/01","certificate":"c","chain":null}`,
		"empty []": `{"slot_id":"h/01","certificate":"c","chain":[]}`,
	}
	want := map[string]string{"string": pemA + pemB, "array": pemA + pemB + "\n"}
	for name, in := range cases {
		var a ImportCertArgs
		if e := DecodeArgs([]byte(in), &a); e != nil {
			t.Fatalf("%s: %v", name, e)
		}
		if a.SlotID != "h/01" || a.Certificate != "c" || a.Chain != want[name] {
			t.Errorf("%s: got %+v", name, a)
		}
	}
}

func TestImportCertChainRefusals(t *testing.T) {
	cases := map[string]string{
		`{"slot_id":"h/01","chain":[1]}`:         `"chain" must be a PEM string or an array`,
		`{"slot_id":"h/01","chain":{"a":"b"}}`:   `"chain" must be a PEM string or an array`,
		`{"slot_id":"h/01","colour":"red"}`:      `unknown field "colour"`,
		`{"slot_id":7}`:                          `"slot_id" must be string`,
		`{"slot_id":"h/01","certificate":"-----`: `incomplete JSON`,
	}
	for in, msg := range cases {
		var a ImportCertArgs
		e := DecodeArgs([]byte(in), &a)
		if e == nil || e.Code != CodeBadRequest || !strings.Contains(e.Message, msg) {
			t.Errorf("%s: %v, want bad_request %q", in, e, msg)
		}
	}
}

func quote(s string) string {
	return `"` + strings.ReplaceAll(s, "\n", `\n`) + `"`
}
