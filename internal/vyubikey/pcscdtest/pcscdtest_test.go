package pcscdtest

import (
	"path/filepath"
	"testing"

	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
)

func TestMain(m *testing.M) { Main(m) }

// A card pulled without waiting for pcscd to notice, as a test that drops its
// connection does, and plugged again at once is usable: pcscd still shows the
// pulled card for a moment, and opening that one would keep the reader held for
// the rest of the process.
func TestReplugRightAfterAPull(t *testing.T) {
	card, err := vyubikey.New(vyubikey.Config{Serial: 271828, StatePath: filepath.Join(t.TempDir(), "card.json")})
	if err != nil {
		t.Fatal(err)
	}
	LockAllReaders(t)
	p := PlugCard(t, card, vyubikey.DefaultVPCDAddr)
	for i := 0; i < 3; i++ {
		p.Card.Unplug()
		p.cancel()
		<-p.done
		p.done = nil
		p.Replug(t)
		if st, err := State(p.Reader); err != nil || !st.Present || st.Exclusive {
			t.Fatalf("after replug %d: %+v, %v", i, st, err)
		}
	}
}
