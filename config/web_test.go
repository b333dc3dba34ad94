package config

import (
	"errors"
	"testing"
)

func TestPlainWebOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		text string
		err  error
	}{
		{"[web]\nenabled = true\n", nil},
		{"[web]\nenabled = true\nlisten = \"127.0.0.1:8080\"\ntls = false\n", nil},
		{"[web]\nenabled = true\nlisten = \"0.0.0.0:8080\"\ntls = false\n", ErrPlainWeb},
		{"[web]\nenabled = true\nlisten = \":80\"\ntls = false\n", ErrPlainWeb},
		{"[web]\nsession_timeout = 30\n", ErrBareDuration},
		{"[web]\nsession_timeout = \"5s\"\n", ErrInvalid},
		{"[web]\nlisten = \"nonsense\"\n", ErrInvalid},
	} {
		c, err := Parse([]byte("[mqtt]\ndev_broker = true\n" + tc.text))
		if tc.err == nil {
			if err != nil {
				t.Errorf("%q: %v", tc.text, err)
				continue
			}
			w, _ := c.Web.Effective()
			if w.Listen == "" || w.SessionTimeout == 0 {
				t.Errorf("%q: defaults not applied: %+v", tc.text, w)
			}
			continue
		}
		if !errors.Is(err, tc.err) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v, want %v", tc.text, err, tc.err)
		}
	}
	if !Default().Web.UseTLS() || Default().Web.Enabled {
		t.Error("the dashboard must default to off, and to TLS when on")
	}
}
