package appliance

import (
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device/hotplug"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/yubikey"
)

// yubikeyProvider builds the PIV backend from the configuration.
func yubikeyProvider(c config.YubiKey) (*yubikey.Provider, error) {
	opts := yubikey.ProviderOptions{BySerial: map[uint32]yubikey.Options{}, CardState: hotplug.CardState}
	def, err := yubikeyOptions("yubikey", c.PIN, c.PINFile, c.ManagementKeyFile, c.AllowDefaults)
	if err != nil {
		return nil, err
	}
	opts.Default = def
	for i, card := range c.Cards {
		o, err := yubikeyOptions(fmt.Sprintf("yubikey.card[%d]", i), card.PIN, card.PINFile, card.ManagementKeyFile, card.AllowDefaults || c.AllowDefaults)
		if err != nil {
			return nil, err
		}
		if o.PIN == "" {
			o.PIN = def.PIN
		}
		if o.ManagementKey == nil {
			o.ManagementKey = def.ManagementKey
		}
		opts.BySerial[card.Serial] = o
	}
	if c.AttestationRoots != "" {
		data, err := os.ReadFile(c.AttestationRoots)
		if err != nil {
			return nil, fmt.Errorf("%w: yubikey.attestation_roots: %v", config.ErrInvalid, err)
		}
		opts.AttestationRoots = x509.NewCertPool()
		if !opts.AttestationRoots.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("%w: yubikey.attestation_roots: no PEM certificates in %s", config.ErrInvalid, c.AttestationRoots)
		}
	}
	return yubikey.NewProvider(opts), nil
}

// yubikeyPINConfigured reports whether the configuration gives a YubiKey's PIN. A
// YubiKey checks a configured PIN only when first used, so the secrets applier asks
// this rather than the token: the configuration wins over a stored PIN, as it does
// for a PKCS#11 token it logged in.
func yubikeyPINConfigured(c config.YubiKey) func(hsm.Info) bool {
	return func(info hsm.Info) bool {
		if info.Kind != hsm.KindYubiKey {
			return false
		}
		if c.PIN != "" || c.PINFile != "" {
			return true
		}
		for _, card := range c.Cards {
			if fmt.Sprint(card.Serial) == info.Serial {
				return card.PIN != "" || card.PINFile != ""
			}
		}
		return false
	}
}

func yubikeyOptions(field, pin, pinFile, mkFile string, allowDefaults bool) (yubikey.Options, error) {
	o := yubikey.Options{AllowDefaults: allowDefaults}
	var err error
	if o.PIN, err = config.ReadSecret(field+".pin_file", pin, pinFile); err != nil {
		return o, err
	}
	if mkFile != "" {
		mk, err := config.ReadSecret(field+".management_key_file", "", mkFile)
		if err != nil {
			return o, err
		}
		if o.ManagementKey, err = hex.DecodeString(mk); err != nil || (len(o.ManagementKey) != 24 && len(o.ManagementKey) != 16 && len(o.ManagementKey) != 32) {
			return o, fmt.Errorf("%w: %s.management_key_file: not a 16, 24 or 32 byte key in hex", config.ErrInvalid, field)
		}
	}
	return o, nil
}
