package device

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// CRL numbers: a CRL is signed only with a number greater than the last one this
// appliance signed for the CA, and the number is recorded before the CRL is
// answered, so a repeated or reordered request cannot publish an older list under
// a newer number's place.

func caIDOf(is *ca.Issuer) (string, error) {
	return ca.ID(is.Cert.PublicKey)
}

// checkCRLNumber refuses, before anything is signed, a number not above the last.
func (d *Device) checkCRLNumber(is *ca.Issuer, n *big.Int) error {
	caID, err := caIDOf(is)
	if err != nil {
		return err
	}
	return crlNumberError(d.store.CheckCRLNumber(caID, n))
}

// recordCRLNumber keeps n as the CA's last CRL number; when that fails the CRL is
// withheld, since a later request could otherwise reuse its number.
func (d *Device) recordCRLNumber(is *ca.Issuer, n *big.Int) error {
	caID, err := caIDOf(is)
	if err != nil {
		return err
	}
	return crlNumberError(d.store.AdvanceCRLNumber(caID, n))
}

// crlNumberError answers conflict with the last number in details, so a client can
// send the next one.
func crlNumberError(err error) error {
	var ce *store.CRLNumberError
	if !errors.As(err, &ce) {
		return err
	}
	return &protocol.Error{
		Code:    protocol.CodeConflict,
		Message: fmt.Sprintf("CRL number must be greater than %s, the last one this appliance signed for CA %s", ce.Last, ce.CAID),
		Details: map[string]any{"last_crl_number": json.Number(ce.Last.String())},
	}
}

// lastCRLNumber is slot.show's last_crl_number: empty when no CRL was signed.
func (d *Device) lastCRLNumber(caID string) json.Number {
	last, err := d.store.LastCRLNumber(caID)
	if err != nil || last == nil {
		return ""
	}
	return json.Number(last.String())
}
