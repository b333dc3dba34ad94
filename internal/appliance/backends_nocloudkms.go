//go:build nocloudkms

package appliance

import (
	"fmt"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/hsm"
)

// cloudkmsProviders stands in for the Cloud KMS backend in binaries built with the
// tag nocloudkms (smaller, without gRPC and Google's client libraries): configuring a
// key ring there is an error rather than a key ring that silently never appears.
func cloudkmsProviders(cfg *config.Config) ([]hsm.Provider, error) {
	if len(cfg.CloudKMS) > 0 {
		return nil, fmt.Errorf("%w: [[cloudkms]] is configured, but this binary was built without the Cloud KMS backend (build tag nocloudkms)", config.ErrInvalid)
	}
	return nil, nil
}
