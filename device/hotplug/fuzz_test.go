package hotplug

import (
	"bytes"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseUEvent: ParseUEvent never panics; a refusal returns the
// zero UEvent; an accepted event has the shape the kernel sends, its fields
// agree with its environment, and writing it back out the kernel's way parses
// to the same event. SmartCard must not panic on anything parsed.
func FuzzParseUEvent(f *testing.F) {
	for _, c := range append(append([]ueventCase{}, yubikeyPlug...), yubikeyUnplug...) {
		f.Add([]byte(c.msg))
	}
	for _, s := range []string{
		"add@/devices/x\x00ACTION=remove\x00",
		"add@/devices/x\x00DEVPATH=/devices/y\x00",
		"add@/devices/x\x00SEQNUM=18446744073709551616\x00",
		"add@/devices/x\x00SEQNUM=-1\x00",
		"add@/devices/x\x00=value\x00",
		"add@/devices/x\x00NOEQUALS\x00",
		"add@/devices/x\x00SUBSYSTEM=usb\x00MODALIAS=usb:v1050ic\x00",
		"add@/devices/x\x00SUBSYSTEM=usb\x00MODALIAS=usb:vZZZZp0407ic0B\x00PRODUCT=/\x00INTERFACE=/\x00",
		"libudev\x00\xfe\xed\xca\xfe",
		"@/devices/x\x00",
		"add@\x00",
		"",
		"\x00\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseUEvent(b)
		if err != nil {
			if !reflect.DeepEqual(e, UEvent{}) {
				t.Fatalf("refused (%v) but returned %+v", err, e)
			}
			return
		}
		e.SmartCard()
		if e.Action == "" || e.DevPath == "" || strings.Contains(e.Action, "@") {
			t.Fatalf("accepted header action %q devpath %q", e.Action, e.DevPath)
		}
		if strings.ContainsRune(e.Action, 0) || strings.ContainsRune(e.DevPath, 0) {
			t.Fatalf("NUL inside a header field: %q %q", e.Action, e.DevPath)
		}
		if bytes.HasPrefix(b, udevMagic) {
			t.Fatalf("accepted a udev monitor message")
		}
		for k, v := range e.Env {
			if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
				t.Fatalf("bad env entry %q=%q", k, v)
			}
		}
		if a, ok := e.Env["ACTION"]; ok && a != e.Action {
			t.Fatalf("ACTION=%q but header action %q", a, e.Action)
		}
		if p, ok := e.Env["DEVPATH"]; ok && p != e.DevPath {
			t.Fatalf("DEVPATH=%q but header path %q", p, e.DevPath)
		}
		if e.Subsystem != e.Env["SUBSYSTEM"] || e.DevType != e.Env["DEVTYPE"] {
			t.Fatalf("subsystem/devtype %q/%q disagree with env", e.Subsystem, e.DevType)
		}
		if s, ok := e.Env["SEQNUM"]; ok {
			if n, err := strconv.ParseUint(s, 10, 64); err != nil || n != e.Seq {
				t.Fatalf("SEQNUM=%q but Seq %d", s, e.Seq)
			}
		} else if e.Seq != 0 {
			t.Fatalf("Seq %d without SEQNUM", e.Seq)
		}

		// Write it back as the kernel would and parse again.
		var out bytes.Buffer
		out.WriteString(e.Action + "@" + e.DevPath + "\x00")
		keys := make([]string, 0, len(e.Env))
		for k := range e.Env {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			out.WriteString(k + "=" + e.Env[k] + "\x00")
		}
		again, err := ParseUEvent(out.Bytes())
		if err != nil {
			t.Fatalf("re-encoded event %q refused: %v", out.Bytes(), err)
		}
		if !reflect.DeepEqual(e, again) {
			t.Fatalf("round trip changed the event:\n%+v\n%+v", e, again)
		}
		if e.SmartCard() != again.SmartCard() {
			t.Fatalf("round trip changed SmartCard")
		}
	})
}
