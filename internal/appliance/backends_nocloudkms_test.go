//go:build nocloudkms

package appliance

import (
	"errors"
	"testing"

	"github.com/iot-hsm/iot-hsm/config"
)

func TestCloudKMSLeftOut(t *testing.T) {
	if ps, err := cloudkmsProviders(config.Default()); err != nil || ps != nil {
		t.Fatalf("no key ring configured: %v %v", ps, err)
	}
	cfg := config.Default()
	cfg.CloudKMS = []config.CloudKMS{{KeyRing: "projects/p/locations/l/keyRings/a"}}
	if _, err := cloudkmsProviders(cfg); !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("a key ring configured in a binary without the backend: %v", err)
	}
}
