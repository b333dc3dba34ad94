package config

import (
	"errors"
	"strings"
	"testing"
)

// Each mistake an operator makes in the file is refused with a message that names
// the key as typed and says what is accepted, not the decoder's Go types.
func TestMistakesNameTheKeyAndTheFix(t *testing.T) {
	for name, tc := range map[string]struct {
		text string
		want []string
		not  []string
	}{
		"single pkcs11 block":   {"[pkcs11]\nmodule = \"/m.so\"", []string{"[[pkcs11]]"}, []string{"slice", "map["}},
		"single cloudkms block": {"[cloudkms]\nkey_ring = \"r\"", []string{"[[cloudkms]]"}, []string{"slice"}},
		"broker without scheme": {"[mqtt]\nbroker = \"127.0.0.1:18883\"",
			[]string{"mqtt.broker", "mqtts://127.0.0.1:18883", "tcp"}, []string{"first path segment"}},
		"broker bad scheme":     {"[mqtt]\nbroker = \"http://b:1883\"", []string{"mqtt.broker", "mqtts"}, nil},
		"string for a number":   {"queue_size = \"8\"", []string{"line 1", "queue_size", "whole number"}, []string{"int"}},
		"number for a string":   {"device_id = 3", []string{"device_id", "quoted string"}, []string{"int64"}},
		"duration without unit": {"[service]\nbroker_wait = \"10\"", []string{"service.broker_wait", "\"10s\""}, nil},
	} {
		_, err := Parse([]byte(tc.text))
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", name, err, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(err.Error(), n) {
				t.Errorf("%s: %q says %q", name, err, n)
			}
		}
	}
}

// A bare number for a duration would be nanoseconds to TOML: it is refused, with
// the way to write it, for every duration key, in plain and listed blocks alike.
func TestBareDurationRefused(t *testing.T) {
	for key, text := range map[string]string{
		"service.broker_wait":        "[service]\nbroker_wait = 10",
		"service.stop_timeout":       "[service]\nstop_timeout = 10",
		"service.hung_grace":         "[service]\nhung_grace = 30",
		"ota.window":                 "[ota]\nwindow = 60",
		"cloudkms[1].call_timeout":   "[[cloudkms]]\nkey_ring = \"a\"\n[[cloudkms]]\nkey_ring = \"b\"\ncall_timeout = 5",
		"cloudkms[0].probe_interval": "[[cloudkms]]\nkey_ring = \"a\"\nprobe_interval = 2.5",
	} {
		_, err := Parse([]byte(text))
		if !errors.Is(err, ErrBareDuration) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrBareDuration", key, err)
			continue
		}
		if !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "s\"") {
			t.Errorf("%s: %q does not name the key and a quoted example", key, err)
		}
	}
	c, err := Parse([]byte("[service]\nbroker_wait = \"10s\"\n[mqtt]\nbroker = \"mqtts://b:8883\""))
	if err != nil || c.Service.BrokerWait.Seconds() != 10 {
		t.Fatalf("broker_wait = \"10s\": %v %v", c, err)
	}
}
