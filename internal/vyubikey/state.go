package vyubikey

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/iot-hsm/iot-hsm/internal/atomicfile"
)

// stateFormat is the version of the JSON state file layout.
const stateFormat = 1

// persistent is everything a YubiKey keeps across power cycles. It is written
// as JSON (byte slices as base64) with mode 0600: it holds private keys, the
// PIN, the PUK and the management key in the clear, as befits a test device.
type persistent struct {
	Format     int     `json:"format"`
	Serial     uint32  `json:"serial"`
	Version    [3]byte `json:"version"`
	FormFactor byte    `json:"form_factor"`

	PIN            []byte `json:"pin"` // 8 bytes, 0xFF padded
	PUK            []byte `json:"puk"`
	PINRetriesMax  int    `json:"pin_retries_max"`
	PINRetriesLeft int    `json:"pin_retries_left"`
	PUKRetriesMax  int    `json:"puk_retries_max"`
	PUKRetriesLeft int    `json:"puk_retries_left"`

	MgmtAlg   byte   `json:"mgmt_alg"`
	MgmtKey   []byte `json:"mgmt_key"`
	MgmtTouch byte   `json:"mgmt_touch"` // 1 never, 2 always

	// Keys by slot ("9a", "82", "f9" ...).
	Keys map[string]*keyRecord `json:"keys"`
	// Objects by hex object ID ("5fc105", "5fff01" ...): the value of tag 53.
	Objects map[string][]byte `json:"objects"`

	// The attestation root: a CA this virtual device's f9 certificate chains to.
	RootKey  []byte `json:"root_key"`  // PKCS#8
	RootCert []byte `json:"root_cert"` // DER
}

// keyRecord is one asymmetric key in a slot.
type keyRecord struct {
	Alg         byte   `json:"alg"`
	PINPolicy   byte   `json:"pin_policy"`   // 1 never, 2 once, 3 always
	TouchPolicy byte   `json:"touch_policy"` // 1 never, 2 always, 3 cached
	Origin      byte   `json:"origin"`       // 1 generated, 2 imported
	PKCS8       []byte `json:"pkcs8"`
}

func (k *keyRecord) clone() *keyRecord {
	c := *k
	c.PKCS8 = bytes.Clone(k.PKCS8)
	return &c
}

// loadState reads a state file; ok is false if it does not exist.
func loadState(path string) (*persistent, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	var p persistent
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, false, fmt.Errorf("parsing %s: %w", path, err)
	}
	if p.Format != stateFormat {
		return nil, false, fmt.Errorf("%s: unsupported state format %d", path, p.Format)
	}
	if p.Keys == nil {
		p.Keys = map[string]*keyRecord{}
	}
	if p.Objects == nil {
		p.Objects = map[string][]byte{}
	}
	if len(p.PIN) != 8 || len(p.PUK) != 8 || mgmtKeyLen(p.MgmtAlg) != len(p.MgmtKey) || len(p.RootKey) == 0 {
		return nil, false, fmt.Errorf("%s: incomplete state", path)
	}
	if _, err := x509.ParseCertificate(p.RootCert); err != nil {
		return nil, false, fmt.Errorf("%s: attestation root: %w", path, err)
	}
	return &p, true, nil
}

// saveState writes the state atomically and durably.
func saveState(path string, p *persistent) error {
	b, err := json.MarshalIndent(p, "", " ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}
