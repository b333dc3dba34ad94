package daemontest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnitFileVerifies runs `systemd-analyze verify` on dist/iot-hsm.service. The
// unit names /usr/bin/iot-hsm, which verify insists exists and is executable, so the
// check runs on a copy whose ExecStart points at the binary built for these tests;
// everything else is the file as shipped. A machine without systemd-analyze fails
// the test: `make deps` installs it (Debian package systemd).
func TestUnitFileVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: install the Debian package systemd (make deps)")
	}
	unit, err := os.ReadFile(filepath.Join(repoRoot, "dist", "iot-hsm.service"))
	if err != nil {
		t.Fatal(err)
	}
	const execStart = "ExecStart=/usr/bin/iot-hsm "
	if strings.Count(string(unit), execStart) != 1 {
		t.Fatalf("the unit should have one %q line", execStart)
	}
	for _, want := range []string{"Type=notify\n", "WatchdogSec=", "Restart=on-failure\n", "RestartForceExitStatus=75\n",
		"StateDirectory=iot-hsm\n", "ProtectSystem=strict\n", "NoNewPrivileges=yes\n", "PrivateTmp=yes\n",
		"CapabilityBoundingSet=\n", "DevicePolicy=closed\n", "ExecReload=/bin/kill -HUP $MAINPID\n"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit lacks %q", strings.TrimSpace(want))
		}
	}
	dir := t.TempDir()
	copyUnit := strings.Replace(string(unit), execStart, "ExecStart="+binary(t)+" ", 1)
	path := filepath.Join(dir, "iot-hsm.service")
	if err := os.WriteFile(path, []byte(copyUnit), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", path)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	// Warnings (an unknown or misspelt key is only "ignoring") do not change the
	// exit code, so any line about our unit fails the test too. Lines about other
	// units on the machine are not ours to judge.
	if err != nil || strings.Contains(string(out), "iot-hsm.service") {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
