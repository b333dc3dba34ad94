package device

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/hsmtest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// core is an appliance core over an in-memory token (hsmtest) and a real state
// directory: for tests of the device itself, which need neither SoftHSM2 nor cgo.
type core struct {
	tok      *hsmtest.Token
	prov     *hsmtest.Provider
	stateDir string
	slots    *slots.Slots
	hsmID    string
}

// newCore starts the core as the daemon does, over a token logged in with its PIN.
func newCore(t *testing.T) *core {
	t.Helper()
	tok := hsmtest.New(hsmtest.Config{ID: "hsmtest-device"})
	if err := tok.Login(context.Background(), tok.PIN()); err != nil {
		t.Fatal(err)
	}
	return newCoreOver(t, tok, tok)
}

// newCoreOver starts the core with listed (tok, or tok.Core()) as its one HSM.
func newCoreOver(t *testing.T, tok *hsmtest.Token, listed hsm.Token) *core {
	t.Helper()
	c := &core{tok: tok, prov: hsmtest.NewProvider(listed), stateDir: t.TempDir(), hsmID: tok.Info().ID}
	st, err := store.Open(c.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reg := slots.NewRegistry(c.prov)
	if err := reg.Rescan(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.slots = &slots.Slots{Store: st, Registry: reg}
	return c
}

// startCore starts a device over c with a transport that records what it publishes.
func startCore(t *testing.T, c *core, opts Options) (*Device, *fakeTransport) {
	t.Helper()
	opts.DeviceID = "lifecycle-test"
	d := New(opts, c.slots)
	tr := &fakeTransport{}
	if err := d.Start(context.Background(), tr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	return d, tr
}

// startDevice starts a device over a fresh core.
func startDevice(t *testing.T, opts Options) (*Device, *fakeTransport, *core) {
	t.Helper()
	c := newCore(t)
	d, tr := startCore(t, c, opts)
	return d, tr, c
}

func provisioningCert(t *testing.T, cn string, pathLen int) []byte {
	return pkitest.ProvisioningCert(t, cn, pathLen)
}

func call(t *testing.T, d *Device, tr *fakeTransport, cmd, id string, args any) protocol.Reply {
	t.Helper()
	b, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	request(d, cmd, id, string(b))
	return tr.reply(t, d, id)
}

// A token without the optional methods (a Cloud KMS key ring) is answered
// unsupported, naming the HSM, for what it cannot do, and nothing changes; what it
// can do works, its certificates kept by the appliance alone.
func TestTokenWithoutOptionalMethods(t *testing.T) {
	tok := hsmtest.New(hsmtest.Config{ID: "kms-ring", Kind: hsm.KindCloudKMS, NoPIN: true})
	c := newCoreOver(t, tok, tok.Core())
	d, tr := startCore(t, c, Options{})
	unsupported := func(what string, rep protocol.Reply) {
		t.Helper()
		if rep.OK || rep.Error.Code != protocol.CodeUnsupported || !strings.Contains(rep.Error.Message, c.hsmID) {
			t.Fatalf("%s: %+v, want unsupported naming %s", what, rep.Error, c.hsmID)
		}
	}
	unsupported("set_pin", call(t, d, tr, protocol.CmdHSMSetPIN, "pin", protocol.HSMSetPINArgs{HSM: c.hsmID, PIN: "123456"}))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	unsupported("import", call(t, d, tr, protocol.CmdSlotProvision, "imp",
		protocol.ProvisionArgs{HSM: c.hsmID, Slot: "imported", Mode: slots.ModeImport, KeyPEM: keyPEM}))
	if _, err := c.slots.Store.Slot(c.hsmID + "/imported"); !errors.Is(err, store.ErrNotFound) || tok.Keys() != 0 {
		t.Fatalf("a refused import left a slot record (%v) or a key (%d)", err, tok.Keys())
	}

	if rep := call(t, d, tr, protocol.CmdSlotProvision, "gen",
		protocol.ProvisionArgs{HSM: c.hsmID, Slot: "root", Mode: slots.ModeGenerate, KeyType: "p256"}); !rep.OK {
		t.Fatalf("generate: %+v", rep.Error)
	}
	slotID := c.hsmID + "/root"
	rep := call(t, d, tr, protocol.CmdSlotSelfSign, "root",
		protocol.ProvisioningCertArgs{SlotID: slotID, ProvisioningCert: string(provisioningCert(t, "KMS Root", 1))})
	if !rep.OK {
		t.Fatalf("self-sign on a token that holds no certificates: %+v", rep.Error)
	}
	if rec, err := c.slots.Store.Slot(slotID); err != nil || rec.State != store.Provisioned || rec.Certificate == "" {
		t.Fatalf("slot record after self-sign: %+v %v", rec, err)
	}
	unsupported("clear with destroy_key", call(t, d, tr, protocol.CmdSlotClear, "clear",
		protocol.ClearArgs{SlotID: slotID, DestroyKey: true}))
	if rec, err := c.slots.Store.Slot(slotID); err != nil || rec.State != store.Provisioned || tok.Keys() != 1 {
		t.Fatalf("a refused clear changed the slot (%+v %v) or the key (%d)", rec, err, tok.Keys())
	}
}

// A token pulled out answers hsm_offline and leaves no slot record; plugged back in,
// it works with the PIN it was given before.
func TestPulledTokenIsOffline(t *testing.T) {
	d, tr, c := startDevice(t, Options{})
	args := protocol.ProvisionArgs{HSM: c.hsmID, Slot: "01", Mode: slots.ModeGenerate, KeyType: "p256"}
	c.tok.SetPresent(false)
	if rep := call(t, d, tr, protocol.CmdSlotProvision, "gone", args); rep.OK || rep.Error.Code != protocol.CodeHSMOffline {
		t.Fatalf("generate on a pulled token: %+v, want hsm_offline", rep.Error)
	}
	if _, err := c.slots.Store.Slot(c.hsmID + "/01"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("slot record after a failed generate: %v", err)
	}
	c.tok.SetPresent(true)
	if rep := call(t, d, tr, protocol.CmdSlotProvision, "back", args); !rep.OK {
		t.Fatalf("generate after the re-plug: %+v", rep.Error)
	}
}
