// Package softhsmtest is the testing wrapper of softhsm: a fresh token per test. It is
// a package of its own so that the daemon, which links softhsm for --dev, does not
// link testing.
package softhsmtest

import (
	"testing"

	"github.com/iot-hsm/iot-hsm/internal/softhsm"
)

// New creates a fresh token labelled label and points SOFTHSM2_CONF at it for the rest
// of the test (the module reads it in every C_Initialize, re-initialisations included,
// so it must stay set; tests using New cannot run in parallel). It fails the test,
// never skips, when SoftHSM2 is not installed: `make deps` installs it.
func New(t testing.TB, label string) *softhsm.Token {
	t.Helper()
	tok, err := softhsm.Create(t.TempDir(), label)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	return tok
}
