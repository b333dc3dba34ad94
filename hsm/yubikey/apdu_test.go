package yubikey

import (
	"context"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// PIV instructions counted on the virtual card.
const (
	insSelect       = 0xA4
	insVerify       = 0x20
	insAuthenticate = 0x87
)

// TestSignatureIsOneAPDU: with the PIN verified in the card's session (PIN policy
// once), a signature is one GENERAL AUTHENTICATE: no SELECT, no PIN check. After the
// card was released and opened again it verifies the PIN once more and signs.
func TestSignatureIsOneAPDU(t *testing.T) {
	card, _, prov := plug(t)
	ctx := context.Background()
	tok := token(t, prov)
	if err := tok.Login(ctx, "123456"); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Generate(ctx, "9c", hsm.P256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer(ctx, "9c")
	if err != nil {
		t.Fatal(err)
	}
	sign(t, s)
	count := func() [3]uint64 {
		return [3]uint64{card.APDUs(insSelect), card.APDUs(insVerify), card.APDUs(insAuthenticate)}
	}
	before := count()
	const n = 10
	for range n {
		sign(t, s)
	}
	after := count()
	// On a loaded machine the idle release (200 ms here) can close the card between
	// two signatures; each reopening SELECTs and verifies once, and nothing else may.
	if sel, ver, auth := after[0]-before[0], after[1]-before[1], after[2]-before[2]; ver != sel || auth != n {
		t.Errorf("%d signatures sent %d SELECT, %d VERIFY and %d GENERAL AUTHENTICATE; want one VERIFY per SELECT (reopening) and %d", n, sel, ver, auth, n)
	}

	time.Sleep(400 * time.Millisecond) // the idle release closes the card
	before = count()
	sign(t, s)
	if ver := card.APDUs(insVerify) - before[1]; ver == 0 {
		t.Error("a signature after the card was opened again sent no VERIFY")
	}
}
