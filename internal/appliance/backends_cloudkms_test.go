//go:build !nocloudkms

package appliance

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/kmstest"
)

func TestCloudKMSProviders(t *testing.T) {
	srv := kmstest.Start(t)
	for _, r := range []string{"projects/p/locations/l/keyRings/a", "projects/p/locations/l/keyRings/b"} {
		if err := srv.AddKeyRing(r); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Parse([]byte(`
[[cloudkms]]
key_ring = "projects/p/locations/l/keyRings/a"
endpoint = "` + srv.Addr() + `"
insecure = true

[[cloudkms]]
key_ring = "projects/p/locations/l/keyRings/b"
id = "second"
endpoint = "` + srv.Addr() + `"
insecure = true
`))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := cloudkmsProviders(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ps[0].Close()
	if len(ps) != 1 {
		t.Fatalf("%d providers for one endpoint", len(ps))
	}
	toks, err := ps[0].Tokens(context.Background())
	if err != nil || len(toks) != 2 {
		t.Fatalf("tokens %v %v", toks, err)
	}
	for i, want := range []string{"cloudkms-a", "cloudkms-second"} {
		if info := toks[i].Info(); info.ID != want || !info.Present {
			t.Errorf("token %d: %+v, want %s present", i, info, want)
		}
	}

	cfg.CloudKMS = []config.CloudKMS{{KeyRing: "projects/p/locations/l/keyRings/a", CredentialsFile: filepath.Join(t.TempDir(), "missing.json")}}
	if _, err := cloudkmsProviders(cfg); !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("a missing credentials file: %v", err)
	}
}
