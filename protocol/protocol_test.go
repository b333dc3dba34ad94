package protocol

import (
	"strings"
	"testing"
)

func TestDecodeRequest(t *testing.T) {
	req, err := DecodeRequest([]byte(`{"id":"a-1","reply_to":"x/y","expires_at":"2026-11-27T10:00:05Z","args":{"n":1}}`))
	if err != nil || req.ID != "a-1" || req.ReplyTo != "x/y" || req.ExpiresAt == nil || string(req.Args) != `{"n":1}` {
		t.Fatalf("%+v %v", req, err)
	}
	cases := map[string]struct {
		payload string
		id      string
	}{
		"broken JSON keeps an id read before the break": {`{"id":"b-2","reply_to":"r/t","args":[1,2}`, "b-2"},
		"broken before the id":                          {`{"args":[1,2},"id":"c-3"}`, ""},
		"not an object":                                 {`[1,2]`, ""},
		"unknown envelope field":                        {`{"id":"d-4","colour":"red"}`, "d-4"},
		"invalid id":                                    {`{"id":"has space"}`, ""},
		"id too long":                                   {`{"id":"` + strings.Repeat("a", 129) + `"}`, ""},
		"wildcard reply_to":                             {`{"id":"e-5","reply_to":"a/#"}`, "e-5"},
		"trailing data":                                 {`{"id":"f-6"} {}`, "f-6"},
		"oversize":                                      {`{"id":"g-7","args":{"p":"` + strings.Repeat("x", MaxPayload) + `"}}`, "g-7"},
		"empty":                                         {``, ""},
	}
	for name, c := range cases {
		req, err := DecodeRequest([]byte(c.payload))
		if err == nil || err.Code != CodeBadRequest {
			t.Errorf("%s: error %v, want bad_request", name, err)
		}
		if req.ID != c.id {
			t.Errorf("%s: id %q, want %q", name, req.ID, c.id)
		}
	}
	if req, _ := DecodeRequest([]byte(`{"id":"e-5","reply_to":"a/#"}`)); req.ReplyTo != "" {
		t.Errorf("a wildcard reply_to is kept for the refusal: %q", req.ReplyTo)
	}
	if req, _ := DecodeRequest([]byte(`{"id":"b-2","reply_to":"r/t","args":[1,2}`)); req.ReplyTo != "r/t" {
		t.Errorf("reply_to of a broken message: %q", req.ReplyTo)
	}
}

func TestDecodeArgsRefusesUnknownFields(t *testing.T) {
	var a ProvisionArgs
	if err := DecodeArgs([]byte(`{"hsm":"h","slot":"01","mode":"generate","colour":"red"}`), &a); err == nil || !strings.Contains(err.Message, "colour") {
		t.Fatalf("unknown field: %v", err)
	}
	if err := DecodeArgs(nil, &a); err != nil {
		t.Fatalf("absent args: %v", err)
	}
	if err := DecodeArgs([]byte(`{"key_password":"s3cret","hsm":5}`), &a); err == nil || strings.Contains(err.Message, "s3cret") {
		t.Fatalf("type error must not echo input: %v", err)
	}
}

func TestFingerprintIgnoresWhitespace(t *testing.T) {
	a := Fingerprint("sign", []byte(`{"a": 1, "b": [1, 2]}`))
	b := Fingerprint("sign", []byte(`{"a":1,"b":[1,2]}`))
	c := Fingerprint("sign", []byte(`{"a":2,"b":[1,2]}`))
	d := Fingerprint("status", []byte(`{"a":1,"b":[1,2]}`))
	if string(a) != string(b) || string(a) == string(c) || string(a) == string(d) {
		t.Fatal("fingerprint")
	}
}

func TestTopics(t *testing.T) {
	tp := Topics{Root: "iot-hsm", Device: "d1"}
	if cmd, ok := tp.ParseCmdTopic("iot-hsm/d1/cmd/slot.show"); !ok || cmd != "slot.show" {
		t.Fatal(cmd)
	}
	if id, ok := tp.ParseCASignTopic(tp.CASign("abc")); !ok || id != "abc" {
		t.Fatal(id)
	}
	if _, ok := tp.ParseCASignTopic("iot-hsm/ca/a/b/sign"); ok {
		t.Fatal("nested ca topic accepted")
	}
	if tp.CASignShared("abc") != "$share/iot-hsm/iot-hsm/ca/abc/sign" {
		t.Fatal(tp.CASignShared("abc"))
	}
}
