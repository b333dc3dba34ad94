//go:build cgo

package device

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/store"
)

// rig is an appliance core over a real SoftHSM2 token and a real state directory.
type rig struct {
	tok      *softhsm.Token
	stateDir string
	mod      *pkcs11.Module
	slots    *slots.Slots
	hsmID    string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{tok: softhsmtest.New(t, "device-test"), stateDir: t.TempDir()}
	r.open(t)
	return r
}

// open starts the core as the daemon does at start-up: load the module, log in, open
// the state store.
func (r *rig) open(t *testing.T) {
	t.Helper()
	mod, err := pkcs11.Open(r.tok.Module)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok, err := mod.Token(ctx, r.tok.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Login(ctx, r.tok.PIN); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(r.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	reg := slots.NewRegistry(mod)
	if err := reg.Rescan(ctx); err != nil {
		t.Fatal(err)
	}
	r.mod, r.hsmID = mod, tok.Info().ID
	r.slots = &slots.Slots{Store: st, Registry: reg}
	t.Cleanup(r.close)
}

func (r *rig) close() {
	if r.slots != nil {
		r.slots.Store.Close()
		r.mod.Close()
		r.slots = nil
	}
}

// openssl runs the real openssl to make key files the way operators do.
func openssl(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
