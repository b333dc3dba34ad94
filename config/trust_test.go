package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTrustControllersCRL(t *testing.T) {
	crl := filepath.Join(t.TempDir(), "controllers.crl")
	os.WriteFile(crl, []byte("crl bytes"), 0o644)
	c, err := Parse([]byte("[trust]\ncontrollers = \"/b.pem\"\ncontrollers_crl = \"" + crl + "\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := c.Trust.ReadControllersCRL(); err != nil || string(b) != "crl bytes" {
		t.Fatalf("read %q %v", b, err)
	}
	if b, err := (Trust{}).ReadControllersCRL(); b != nil || err != nil {
		t.Fatalf("none configured: %q %v", b, err)
	}
	for name, tr := range map[string]Trust{
		"a CRL without a bundle": {ControllersCRL: crl},
		"a missing CRL file":     {Controllers: "/b.pem", ControllersCRL: crl + ".missing"},
	} {
		if _, err := tr.ReadControllersCRL(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "trust.controllers_crl") {
			t.Errorf("%s: %v, want ErrInvalid naming trust.controllers_crl", name, err)
		}
	}
}
