package config

import (
	"errors"
	"testing"
	"time"
)

func TestOTAConfig(t *testing.T) {
	c, err := Parse([]byte("[ota]\nmode = \"binary\"\npublic_keys = [\"RWQ...\"]\nwindow = \"30s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	o, err := c.OTA.Effective("/var/lib/iot-hsm")
	if err != nil || o.Window != 30*time.Second || o.MaxSize != DefaultOTAMaxSize || o.DownloadDir != "/var/lib/iot-hsm/ota/download" {
		t.Fatalf("%+v %v", o, err)
	}
	if o, err := Default().OTA.Effective("/s"); err != nil || o.Mode != "off" {
		t.Fatalf("default: %+v %v", o, err)
	}
	for _, bad := range []OTA{{Mode: "apt"}, {Mode: "binary"}, {Mode: "rauc", Window: time.Second}} {
		if _, err := bad.Effective("/s"); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v accepted", bad)
		}
	}
}
