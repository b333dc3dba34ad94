package cross

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/config"
)

const external = "../buildroot"

// TestApplianceConfigParses: the image's /etc/iot-hsm/config.toml is accepted by the
// daemon's own parser (unknown keys are errors) and keeps state and the secrets key on
// the data partition.
func TestApplianceConfigParses(t *testing.T) {
	path := filepath.Join(external, "board/iot-hsm/rootfs-overlay/etc/iot-hsm/config.toml")
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	// The data partition is the only writable place that survives an A/B update:
	// the state and the key sealing stored PINs must both be on it, apart.
	const data = "/var/lib/iot-hsm/"
	if !strings.HasPrefix(cfg.StateDir, data) {
		t.Errorf("state_dir = %q, want a directory on the data partition %s", cfg.StateDir, data)
	}
	key := cfg.Secrets.Key()
	if !strings.HasPrefix(key, data) || strings.HasPrefix(key, filepath.Clean(cfg.StateDir)+"/") {
		t.Errorf("[secrets] key_file = %q, want it on the data partition %s and outside state_dir %s (the root filesystem is read-only)", key, data, cfg.StateDir)
	}
	checkApplianceBroker(t, cfg)
}

// checkApplianceBroker: the image serves no one but signed controllers, through a
// broker that authenticates it and that it authenticates. It starts without --dev,
// so it must name a broker; the embedded one (no authentication) never runs there.
func checkApplianceBroker(t *testing.T, cfg *config.Config) {
	t.Helper()
	m := cfg.MQTT
	if err := cfg.CheckBroker(false); err != nil || m.DevBroker {
		t.Errorf("the image's daemon would not start, or would run the embedded broker: %v (dev_broker %v)", err, m.DevBroker)
	}
	scheme, _, _ := strings.Cut(m.Broker, "://")
	if scheme != "ssl" && scheme != "tls" && scheme != "mqtts" || m.AllowPlaintext {
		t.Errorf("[mqtt] broker = %q, allow_plaintext = %v: want TLS only", m.Broker, m.AllowPlaintext)
	}
	if m.CAFile == "" || m.CertFile == "" || m.KeyFile == "" {
		t.Errorf("[mqtt] ca_file %q, cert_file %q, key_file %q: want the broker's CA pinned and a client certificate", m.CAFile, m.CertFile, m.KeyFile)
	}
	// Each appliance's own key: on the data partition, not in the image.
	if !strings.HasPrefix(m.KeyFile, "/var/lib/iot-hsm/") {
		t.Errorf("[mqtt] key_file %q: want it on the data partition", m.KeyFile)
	}
	tmpfiles, err := os.ReadFile(filepath.Join(external, "board/iot-hsm/rootfs-overlay/usr/lib/tmpfiles.d/iot-hsm.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^d ` + regexp.QuoteMeta(filepath.Dir(m.KeyFile)) + ` +0700 iot-hsm iot-hsm`).Match(tmpfiles) {
		t.Errorf("tmpfiles.d/iot-hsm.conf does not make %s (0700, the service's user) for the client key", filepath.Dir(m.KeyFile))
	}
	if cfg.Trust.Controllers == "" || !cfg.Trust.RequireTopic {
		t.Errorf("[trust] controllers %q, require_topic %v: want only signed requests, bound to their topic", cfg.Trust.Controllers, cfg.Trust.RequireTopic)
	}
}

// TestDefconfigsNameExistingFiles: every $(BR2_EXTERNAL_IOT_HSM_PATH)/... path in the
// defconfigs exists, and each defconfig selects the package and the image's parts.
func TestDefconfigsNameExistingFiles(t *testing.T) {
	defconfigs, _ := filepath.Glob(filepath.Join(external, "configs", "*_defconfig"))
	if len(defconfigs) < 3 {
		t.Fatalf("want defconfigs for the Pi 3/Zero 2 W, 4 and 5; found %v", defconfigs)
	}
	ref := regexp.MustCompile(`\$\(BR2_EXTERNAL_IOT_HSM_PATH\)/([^" ]+)`)
	for _, dc := range defconfigs {
		data, err := os.ReadFile(dc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ref.FindAllStringSubmatch(string(data), -1) {
			if _, err := os.Stat(filepath.Join(external, m[1])); err != nil {
				t.Errorf("%s names %s: %v", filepath.Base(dc), m[1], err)
			}
		}
		for _, want := range []string{"BR2_PACKAGE_IOT_HSM=y", "BR2_INIT_SYSTEMD=y", "BR2_PACKAGE_PCSC_LITE=y",
			"BR2_PACKAGE_CCID=y", "BR2_PACKAGE_MOSQUITTO_CLIENTS=y", "# BR2_PACKAGE_MOSQUITTO_BROKER is not set",
			"BR2_ROOTFS_OVERLAY=", "BR2_ROOTFS_POST_BUILD_SCRIPT=", "BR2_ROOTFS_POST_IMAGE_SCRIPT=",
			"BR2_TARGET_ROOTFS_EXT2_SIZE="} {
			if !strings.Contains(string(data), want) {
				t.Errorf("%s lacks %s", filepath.Base(dc), want)
			}
		}
	}
}

// TestPresetsMatchUnits: each unit the overlay ships or the image gets is matched by
// a line of the preset file (preset lines are globs: a backslash would escape).
func TestPresetsMatchUnits(t *testing.T) {
	overlay := filepath.Join(external, "board/iot-hsm/rootfs-overlay")
	preset, err := os.ReadFile(filepath.Join(overlay, "usr/lib/systemd/system-preset/50-iot-hsm.preset"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, line := range strings.Split(string(preset), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "enable" {
			patterns = append(patterns, f[1])
		}
	}
	mounts, _ := filepath.Glob(filepath.Join(overlay, "etc/systemd/system/*.mount"))
	units := []string{"iot-hsm.service", "pcscd.socket"}
	for _, m := range mounts {
		units = append(units, filepath.Base(m))
	}
	for _, u := range units {
		ok := false
		for _, p := range patterns {
			if m, _ := filepath.Match(p, u); m {
				ok = true
			}
		}
		if !ok {
			t.Errorf("no preset line enables %s (patterns %v)", u, patterns)
		}
	}
	if len(mounts) != 1 || filepath.Base(mounts[0]) != `var-lib-iot\x2dhsm.mount` {
		t.Errorf("want one mount unit for /var/lib/iot-hsm, found %v", mounts)
	}
}

// TestImageLayout: the genimage template has boot, two root slots of one size and the
// data partition, labelled as the mount unit expects.
func TestImageLayout(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(external, "board/iot-hsm/genimage.cfg.in"))
	if err != nil {
		t.Fatal(err)
	}
	parts := regexp.MustCompile(`(?m)^\s*partition ([\w-]+) \{`).FindAllStringSubmatch(string(data), -1)
	var names []string
	for _, p := range parts {
		names = append(names, p[1])
	}
	if strings.Join(names, " ") != "boot rootfs-a rootfs-b data" {
		t.Errorf("partitions %v, want boot rootfs-a rootfs-b data", names)
	}
	if strings.Count(string(data), "size = #ROOTFS_SIZE#") != 2 {
		t.Error("both root slots should have the root filesystem's size")
	}
	mount, err := os.ReadFile(filepath.Join(external, "board/iot-hsm/rootfs-overlay/etc/systemd/system", `var-lib-iot\x2dhsm.mount`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `label = "iot-hsm-data"`) || !strings.Contains(string(mount), "What=/dev/disk/by-label/iot-hsm-data") {
		t.Error("the data partition's label and the mount unit's What= disagree")
	}
}
