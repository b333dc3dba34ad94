package config

import (
	"fmt"
	"os"
)

// Trust says whose requests the appliance executes.
type Trust struct {
	// Controllers is a PEM bundle of the CAs that issue the controllers' (the PKI's,
	// the operators') certificates. When set, only requests signed (compact JWS with
	// an x5c chain) by a certificate chaining to it, and carrying the iot-hsm
	// controller extended key usage (auth.ControllerEKU), are executed.
	Controllers string `toml:"controllers"`
	// ControllersCRL is a file of CRLs (PEM, or one DER CRL) issued by CAs of the
	// bundle: a certificate on its issuer's CRL is refused, and so is everything a
	// CA issued once its CRL is past nextUpdate.
	ControllersCRL string `toml:"controllers_crl"`
	// RequireTopic refuses signed requests that do not name, in their protected
	// header "topic", the MQTT topic they were published to. Without the binding a
	// signed request can be published again to another appliance or under another
	// command. The protocol's first version has no such header, so it is off unless
	// every controller sends it (iot-hsm console always does).
	RequireTopic bool `toml:"require_topic"`
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

// ReadControllersCRL returns the CRL file's content, or nil when none is configured.
// A CRL without a bundle is refused: it would protect nothing.
func (t Trust) ReadControllersCRL() ([]byte, error) {
	if t.ControllersCRL == "" {
		return nil, nil
	}
	if t.Controllers == "" {
		return nil, fmt.Errorf("%w: trust.controllers_crl needs trust.controllers", ErrInvalid)
	}
	b, err := os.ReadFile(t.ControllersCRL)
	if err != nil {
		return nil, fmt.Errorf("%w: trust.controllers_crl: %v", ErrInvalid, err)
	}
	return b, nil
}
