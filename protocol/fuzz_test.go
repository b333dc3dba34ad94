package protocol

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// Fuzz targets for the request envelope. Seeds are here and in
// testdata/fuzz/<Target>/; `make fuzz` runs each for a bounded time.

// requestSeeds are envelopes the daemon sees: valid ones and known tricky ones.
var requestSeeds = []string{
	`{"id":"a-1","reply_to":"x/y","expires_at":"2026-11-27T10:00:05Z","args":{"n":1}}`,
	`{"id":"b-2","args":{"kind":"certificate","csr":"-----BEGIN CERTIFICATE REQUEST-----\n..."}}`,
	`{"id":"c-3","args":null}`,
	`{"id":"d-4","args":{ "a" : [ 1 , 2 ] , "b" : "<&>\u2028" }}`,
	`{"id":"e-5","reply_to":"a/#"}`,
	`{"id":"f-6"} {}`,
	`{"id":"g-7","colour":"red"}`,
	`{"args":[1,2},"id":"h-8"}`,
	`{"id":"i-9","id":"j-10"}`,
	`{"ID":"k-11","Reply_To":"r"}`,
	`{"id":"l-12","expires_at":"2026-11-27T10:00:05+23:59"}`,
	`{"id":"m-13","args":"\xff\xfe"}`,
	`[1,2]`,
	``,
}

// FuzzDecodeRequest: DecodeRequest never panics; a refusal is bad_request and
// names only a valid id (or none); an accepted request
// re-encodes to one DecodeRequest accepts with the same id, reply_to,
// expires_at and args fingerprint.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		req, perr := DecodeRequest(payload)
		if perr != nil {
			if perr.Code != CodeBadRequest {
				t.Fatalf("refusal code %q, want %q (%v)", perr.Code, CodeBadRequest, perr)
			}
			if req.ID != "" && !ValidID(req.ID) {
				t.Fatalf("refusal carries invalid id %q", req.ID)
			}
			// reply_to is not checked here: the refusal of a bad reply_to
			// carries it back, and the MQTT client refuses to publish there.
			if req.ID == "" && req.ReplyTo != "" {
				t.Fatalf("refusal carries a reply_to %q without an id", req.ReplyTo)
			}
			return
		}
		if !ValidID(req.ID) {
			t.Fatalf("accepted invalid id %q", req.ID)
		}
		if strings.ContainsAny(req.ReplyTo, "+#\x00") || len(req.ReplyTo) > 512 {
			t.Fatalf("accepted bad reply_to %q", req.ReplyTo)
		}

		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(req); err != nil {
			t.Fatalf("accepted request does not re-encode: %v", err)
		}
		again, perr := DecodeRequest(buf.Bytes())
		if perr != nil {
			t.Fatalf("re-encoded request %q refused: %v", buf.Bytes(), perr)
		}
		if again.ID != req.ID || again.ReplyTo != req.ReplyTo {
			t.Fatalf("round trip changed id/reply_to: %q/%q -> %q/%q", req.ID, req.ReplyTo, again.ID, again.ReplyTo)
		}
		if (req.ExpiresAt == nil) != (again.ExpiresAt == nil) || req.ExpiresAt != nil && !req.ExpiresAt.Equal(*again.ExpiresAt) {
			t.Fatalf("round trip changed expires_at: %v -> %v", req.ExpiresAt, again.ExpiresAt)
		}
		for _, cmd := range []string{CmdSign, CmdStatus} {
			if !bytes.Equal(Fingerprint(cmd, req.Args), Fingerprint(cmd, again.Args)) {
				t.Fatalf("round trip changed the %s fingerprint: args %q -> %q", cmd, req.Args, again.Args)
			}
		}
	})
}

var argsSeeds = []string{
	`{"hsm":"softhsm","slot":"01","mode":"generate","key_type":"p256"}`,
	`{"hsm":"h","slot":"01","mode":"generate","colour":"red"}`,
	`{"key_password":"s3cret","hsm":5}`,
	`{"kind":"certificate","csr":"x","profile":{"validity":"24h","max_path_len":0,"key_usage":["digital_signature"],"ip_addresses":["::1"]}}`,
	`{"kind":"crl","number":12345678901234567890,"this_update":"2026-01-01T00:00:00Z","revoked":[{"serial":"0a","revoked_at":"2026-01-01T00:00:00Z","reason":"key_compromise"}]}`,
	`{"kind":"digest","digest":"AAEC","hash":"sha256","pss":true}`,
	`{"kind":"crl","number":"1e5"}`,
	`{"slot_id":"s","destroy_key":true}`,
	`{"slot_id":"s"} trailing`,
	` null `,
	``,
	`{"data":"!!!"}`,
}

// argTypes are the command argument types DecodeArgs is used with.
func argTypes() []any {
	return []any{&HSMSetPINArgs{}, &ProvisionArgs{}, &ProvisioningCertArgs{}, &ImportCertArgs{},
		&SlotIDArgs{}, &ClearArgs{}, &SignArgs{}}
}

// FuzzDecodeArgs: DecodeArgs never panics and refuses with bad_request only;
// what it accepts re-encodes to args it accepts again as the same value; the
// fingerprint ignores whitespace.
func FuzzDecodeArgs(f *testing.F) {
	for _, s := range argsSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		for i, v := range argTypes() {
			perr := DecodeArgs(raw, v)
			if perr != nil {
				if perr.Code != CodeBadRequest {
					t.Fatalf("%T: refusal code %q, want %q", v, perr.Code, CodeBadRequest)
				}
				continue
			}
			out, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%T: accepted args do not re-encode: %v", v, err)
			}
			w := argTypes()[i]
			if perr := DecodeArgs(out, w); perr != nil {
				t.Fatalf("%T: re-encoded args %q refused: %v", v, out, perr)
			}
			if !reflect.DeepEqual(normalize(t, v), normalize(t, w)) {
				t.Fatalf("%T: round trip changed the args: %+v -> %+v", v, v, w)
			}
		}
		if json.Valid(raw) {
			var ind bytes.Buffer
			if err := json.Indent(&ind, raw, "\t", "  "); err != nil {
				t.Fatalf("Indent of valid JSON: %v", err)
			}
			if !bytes.Equal(Fingerprint(CmdSign, raw), Fingerprint(CmdSign, ind.Bytes())) {
				t.Fatalf("whitespace changed the fingerprint of %q", raw)
			}
		}
	})
}

// normalize re-encodes v so time zones and json.Number spellings compare by
// value (a time decoded as +01:00 and re-encoded is the same instant).
func normalize(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}
