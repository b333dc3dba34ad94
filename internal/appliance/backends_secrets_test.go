package appliance

import (
	"testing"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/hsm"
)

func TestYubiKeyPINConfigured(t *testing.T) {
	yk := func(serial string) hsm.Info { return hsm.Info{Kind: hsm.KindYubiKey, Serial: serial} }
	none := yubikeyPINConfigured(config.YubiKey{})
	if none(yk("1")) || none(hsm.Info{Kind: hsm.KindPKCS11}) {
		t.Fatal("no PIN configured, yet configured")
	}
	def := yubikeyPINConfigured(config.YubiKey{PINFile: "/etc/iot-hsm/yk.pin"})
	if !def(yk("1")) || def(hsm.Info{Kind: hsm.KindPKCS11, Serial: "1"}) {
		t.Fatal("default PIN")
	}
	cards := yubikeyPINConfigured(config.YubiKey{Cards: []config.YubiKeyCard{{Serial: 12345678, PIN: "x"}, {Serial: 7}}})
	if !cards(yk("12345678")) || cards(yk("7")) || cards(yk("8")) {
		t.Fatal("per-card PINs")
	}
}
