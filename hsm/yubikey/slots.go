package yubikey

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/go-piv/piv-go/v2/piv"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// SlotNames are the PIV slots offered for CA keys: the four standard key slots and
// the twenty retired key-management slots. f9, the attestation key, is never offered:
// replacing it would break attestation of every later key.
var SlotNames = func() []string {
	names := []string{"9a", "9c", "9d", "9e"}
	for k := 0x82; k <= 0x95; k++ {
		names = append(names, strconv.FormatInt(int64(k), 16))
	}
	return names
}()

// ParseSlot maps a protocol slot name to piv-go's slot.
func ParseSlot(name string) (piv.Slot, string, error) {
	n := strings.ToLower(name)
	switch n {
	case "9a":
		return piv.SlotAuthentication, n, nil
	case "9c":
		return piv.SlotSignature, n, nil
	case "9d":
		return piv.SlotKeyManagement, n, nil
	case "9e":
		return piv.SlotCardAuthentication, n, nil
	case "f9":
		return piv.Slot{}, "", fmt.Errorf("%w: f9 is the attestation key and is not offered for CA keys", hsm.ErrInvalidSlot)
	}
	v, err := strconv.ParseUint(n, 16, 32)
	if err == nil && v >= 0x82 && v <= 0x95 {
		if s, ok := piv.RetiredKeyManagementSlot(uint32(v)); ok {
			return s, n, nil
		}
	}
	return piv.Slot{}, "", fmt.Errorf("%w: %q (a YubiKey offers 9a, 9c, 9d, 9e and 82 to 95)", hsm.ErrInvalidSlot, name)
}

// algorithm maps a key type to piv-go's algorithm, by firmware: RSA-3072 and -4096
// arrived in firmware 5.7.
func algorithm(kt hsm.KeyType, v piv.Version) (piv.Algorithm, error) {
	switch kt {
	case hsm.P256:
		return piv.AlgorithmEC256, nil
	case hsm.P384:
		return piv.AlgorithmEC384, nil
	case hsm.RSA2048:
		return piv.AlgorithmRSA2048, nil
	case hsm.RSA3072, hsm.RSA4096:
		if v.Major > 5 || v.Major == 5 && v.Minor >= 7 {
			if kt == hsm.RSA3072 {
				return piv.AlgorithmRSA3072, nil
			}
			return piv.AlgorithmRSA4096, nil
		}
		return 0, fmt.Errorf("%w: %s needs YubiKey firmware 5.7 or later (this one has %d.%d.%d)", hsm.ErrUnsupported, kt, v.Major, v.Minor, v.Patch)
	}
	return 0, fmt.Errorf("%w: key type %q", hsm.ErrUnsupported, kt)
}
