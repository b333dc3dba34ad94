package config

import (
	"errors"
	"testing"
)

func TestCloudKMS(t *testing.T) {
	c, err := Parse([]byte(`
[[cloudkms]]
key_ring = "projects/p1/locations/europe-west1/keyRings/IoT_CA"
credentials_file = "/etc/iot-hsm/kms.json"

[[cloudkms]]
key_ring = "projects/p2/locations/us-east1/keyRings/iot-ca"
id = "iot-ca-us"
endpoint = "private.googleapis.com:443"

[[cloudkms]]
key_ring = "projects/lab/locations/local/keyRings/test"
endpoint = "127.0.0.1:9999"
insecure = true
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.CloudKMS) != 3 {
		t.Fatalf("parsed %+v", c.CloudKMS)
	}
	for i, want := range []string{"cloudkms-iot-ca", "cloudkms-iot-ca-us", "cloudkms-test"} {
		if got := c.CloudKMS[i].HSMID(); got != want {
			t.Errorf("block %d: %s, want %s", i, got, want)
		}
	}
}

func TestCloudKMSRejects(t *testing.T) {
	const ring = `key_ring = "projects/p/locations/l/keyRings/ca"` + "\n"
	for name, text := range map[string]string{
		"not a key ring":       `key_ring = "projects/p/keyRings/ca"`,
		"key ring missing":     `credentials_file = "/x.json"`,
		"same key ring twice":  ring + "[[cloudkms]]\n" + ring,
		"ids collide":          ring + "[[cloudkms]]\nkey_ring = \"projects/q/locations/l/keyRings/CA\"",
		"bad id":               ring + `id = "Ca Ring"`,
		"bad endpoint":         ring + `endpoint = "https://kms"`,
		"insecure remote":      ring + "endpoint = \"kms.example.com:443\"\ninsecure = true",
		"insecure without one": ring + "insecure = true",
		"insecure with creds":  ring + "endpoint = \"127.0.0.1:1\"\ninsecure = true\ncredentials_file = \"/x.json\"",
		"misspelt key":         ring + `credential_file = "/x.json"`,
	} {
		if _, err := Parse([]byte("[[cloudkms]]\n" + text)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// Colliding key rings are fine once one has its own id.
	if _, err := Parse([]byte("[[cloudkms]]\n" + ring + "[[cloudkms]]\nkey_ring = \"projects/q/locations/l/keyRings/ca\"\nid = \"ca-q\"")); err != nil {
		t.Fatal(err)
	}
}
