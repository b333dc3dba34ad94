package config

import (
	"fmt"
	"os"
)

// Trust says whose requests the appliance executes.
type Trust struct {
	// Controllers is a PEM bundle of the CAs that issue the controllers' (the PKI's,
	// the operators') certificates. When set, only requests signed (compact JWS with
	// an x5c chain) by a certificate chaining to it are executed.
	Controllers string `toml:"controllers"`
}

// ReadControllers returns the bundle's PEM, or nil when none is configured.
func (t Trust) ReadControllers() ([]byte, error) {
	if t.Controllers == "" {
		return nil, nil
	}
	b, err := os.ReadFile(t.Controllers)
	if err != nil {
		return nil, fmt.Errorf("%w: trust.controllers: %v", ErrInvalid, err)
	}
	return b, nil
}
