package otatest

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// raucRig is Debian's real rauc (1.8) on a private D-Bus daemon, with two file-backed
// raw slots and a custom bootloader backend that records what RAUC asks of it.
type raucRig struct {
	t                   *testing.T
	dir, bus, conf      string
	slotA, slotB, blLog string
	service             *exec.Cmd
}

func needTools(t *testing.T, tools ...string) {
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (make deps installs it): the RAUC test cannot run", tool)
		}
	}
}

func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func newRAUCRig(t *testing.T) *raucRig {
	needTools(t, "rauc", "mksquashfs", "dbus-daemon", "openssl")
	dir := t.TempDir()
	r := &raucRig{t: t, dir: dir, conf: filepath.Join(dir, "system.conf"), slotA: filepath.Join(dir, "slotA.img"),
		slotB: filepath.Join(dir, "slotB.img"), blLog: filepath.Join(dir, "bootloader.log")}
	os.WriteFile(r.slotA, []byte(strings.Repeat("A", 1<<20)), 0o600)
	os.WriteFile(r.slotB, []byte(strings.Repeat("B", 1<<20)), 0o600)
	run(t, dir, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=iot-hsm test signer")
	run(t, dir, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "stranger-key.pem", "-out", "stranger.pem", "-days", "2", "-subj", "/CN=stranger")
	os.WriteFile(filepath.Join(dir, "bootloader.sh"), []byte(fmt.Sprintf(`#!/bin/sh
echo "$*" >> %[1]s/bootloader.log
case "$1" in
get-primary) cat %[1]s/primary 2>/dev/null || echo A ;;
set-primary) echo "$2" > %[1]s/primary ;;
get-state) cat %[1]s/state-$2 2>/dev/null || echo good ;;
set-state) echo "$3" > %[1]s/state-$2 ;;
get-current) echo A ;;
esac
`, dir)), 0o755)
	os.MkdirAll(filepath.Join(dir, "data"), 0o700)
	os.MkdirAll(filepath.Join(dir, "mnt"), 0o700)
	os.WriteFile(r.conf, []byte(fmt.Sprintf(`[system]
compatible=iot-hsm-test
bootloader=custom
data-directory=%[1]s/data
mountprefix=%[1]s/mnt

[handlers]
bootloader-custom-backend=%[1]s/bootloader.sh

[keyring]
path=%[1]s/cert.pem

[slot.rootfs.0]
device=%[1]s/slotA.img
type=raw
bootname=A

[slot.rootfs.1]
device=%[1]s/slotB.img
type=raw
bootname=B
`, dir)), 0o600)

	bus := exec.Command("dbus-daemon", "--session", "--nofork", "--print-address=1")
	out, _ := bus.StdoutPipe()
	if err := bus.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Process.Kill(); bus.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon: %v", err)
	}
	r.bus = strings.TrimSpace(line)
	r.startService("A")
	return r
}

// startService runs `rauc service` as if booted from slot bootname.
func (r *raucRig) startService(bootname string) {
	r.t.Helper()
	if r.service != nil {
		r.service.Process.Kill()
		r.service.Wait()
	}
	cmd := exec.Command("rauc", "--conf="+r.conf, "--override-boot-slot="+bootname, "service")
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+r.bus)
	log, _ := os.Create(filepath.Join(r.dir, "service-"+bootname+".log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.service = cmd
	r.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Wait for it on the bus.
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		st := exec.Command("rauc", "--conf="+r.conf, "status")
		st.Env = cmd.Env
		if st.Run() == nil {
			return
		}
	}
	b, _ := os.ReadFile(log.Name())
	r.t.Fatalf("rauc service did not come up:\n%s", b)
}

// bundle builds a bundle of image, of the version, signed with cert/key (names in
// the rig's dir).
func (r *raucRig) bundle(name, version string, image []byte, cert, key string) []byte {
	r.t.Helper()
	content := filepath.Join(r.dir, name+"-content")
	os.MkdirAll(content, 0o700)
	os.WriteFile(filepath.Join(content, "rootfs.img"), image, 0o600)
	// format=plain: the verity format needs device-mapper (/dev/mapper/control),
	// which this sandbox does not have; plain bundles are mounted through a loop
	// device. The appliance's bundles use verity (buildroot/board/iot-hsm/rauc).
	os.WriteFile(filepath.Join(content, "manifest.raucm"), []byte(`[update]
compatible=iot-hsm-test
version=`+version+`

[bundle]
format=plain

[image.rootfs]
filename=rootfs.img
`), 0o600)
	out := filepath.Join(r.dir, name+".raucb")
	run(r.t, r.dir, "rauc", "bundle", "--cert", cert, "--key", key, content, out)
	b, err := os.ReadFile(out)
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

func (r *raucRig) slotSums() (string, string) {
	return fileSHA(r.t, r.slotA), fileSHA(r.t, r.slotB)
}

// TestRAUCUpdate installs signed bundles through the daemon's ota.update into real
// RAUC; a bundle from an unknown signer, a corrupted bundle, a truncated download and
// a bundle older than the running version are refused with both slots untouched; after the "reboot" into slot B the daemon
// proves itself healthy and marks the slot good.
func TestRAUCUpdate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the daemon and runs rauc")
	}
	rig := newRAUCRig(t)
	work := t.TempDir()
	bin := build(t, work, "v1.0.0", "")
	deviceID := "ihsm-rauc-" + mqtttest.RandomID()
	listen := fmt.Sprintf("127.0.0.1:%d", brokertest.FreePort(t))
	cfg := filepath.Join(work, "config.toml")
	rebootLog := filepath.Join(work, "reboot.log")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`device_id = %q
[service]
broker_wait = "2s"
stop_timeout = "3s"
[ota]
mode = "rauc"
window = "10s"
rauc_bus = %q
reboot_command = ["sh", "-c", "echo reboot >> %s"]
`, deviceID, rig.bus, rebootLog)), 0o600)
	state := filepath.Join(work, "state")
	args := []string{"run", "--dev", "--config", cfg, "--state-dir", state, "--dev-listen", listen}
	sup := supervise(t, bin, args)
	op := newOperator(t, "tcp://"+listen, deviceID)
	op.waitOTA("v1.0.0", protocol.OTAIdle, 60*time.Second)
	hsms := decode[protocol.HSMListResult](t, op.call(protocol.CmdHSMList, nil))
	provID := "prov-" + mqtttest.RandomID()
	provArgs := protocol.ProvisionArgs{HSM: hsms.HSMs[0].ID, Slot: "01", Mode: "generate", KeyType: "p256"}
	prov := op.callID(provID, protocol.CmdSlotProvision, provArgs, time.Minute)
	decode[protocol.ProvisionResult](t, prov)
	slotsBefore := slots(t, op)

	image := []byte(strings.Repeat("new system ", 40000))
	good := rig.bundle("good", "2.0.0", image, "cert.pem", "key.pem")
	stranger := rig.bundle("stranger", "2.0.0", image, "stranger.pem", "stranger-key.pem")
	older := rig.bundle("older", "0.9.0", image, "cert.pem", "key.pem")
	corrupt := append([]byte(nil), good...)
	corrupt[len(corrupt)/4] ^= 0xff
	srv := newServer(t)
	a0, b0 := rig.slotSums()

	upd := func(path string, data []byte, announce []byte) protocol.OTAUpdateArgs {
		url := srv.put(path, data, false)
		return protocol.OTAUpdateArgs{URL: url, SHA256: sha(announce), Size: int64(len(announce))}
	}
	refuse(t, op, upd("/stranger.raucb", stranger, stranger), "rauc")
	refuse(t, op, upd("/corrupt.raucb", corrupt, corrupt), "rauc")
	refuse(t, op, upd("/truncated.raucb", good[:len(good)/2], good), "body ended")
	if st := refuse(t, op, upd("/older.raucb", older, older), "0.9.0 is older than the running v1.0.0"); st.ErrorCode != protocol.CodePolicyDenied {
		t.Errorf("the older bundle's error code %q", st.ErrorCode)
	}
	if a, b := rig.slotSums(); a != a0 || b != b0 {
		t.Fatal("a refused bundle changed a slot")
	}
	if _, err := os.Stat(rebootLog); err == nil {
		t.Fatal("a refused bundle rebooted")
	}

	r := op.call(protocol.CmdOTAUpdate, upd("/good.raucb", good, good))
	decode[protocol.OTAStatus](t, r)
	// The daemon installs, then stops cleanly and runs the reboot command.
	for end := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, err := os.Stat(rebootLog); err == nil {
			break
		}
		if time.Now().After(end) {
			b, _ := os.ReadFile(rig.blLog)
			t.Fatalf("no reboot; bootloader log:\n%s", b)
		}
	}
	if a, _ := rig.slotSums(); a != a0 {
		t.Error("the booted slot A was written")
	}
	want := sha256.Sum256(image)
	slotB, _ := os.ReadFile(rig.slotB)
	if got := sha256.Sum256(slotB[:len(image)]); got != want {
		t.Errorf("slot B does not hold the image: %s", hex.EncodeToString(got[:]))
	}
	bl, _ := os.ReadFile(rig.blLog)
	if !strings.Contains(string(bl), "set-primary B") {
		t.Errorf("RAUC did not make B primary; bootloader log:\n%s", bl)
	}
	for _, p := range []string{protocol.OTADownload, protocol.OTAVerify, protocol.OTAInstall, protocol.OTAReboot} {
		if !contains(op.phases(), p) {
			t.Errorf("no %s event; events: %v", p, op.phases())
		}
	}

	// "Reboot" into B: RAUC sees B booted; the daemon starts again on the same data.
	rig.startService("B")
	sup2 := supervise(t, bin, args)
	_ = sup2
	st := op.waitOTA("v1.0.0", protocol.OTACommitted, 60*time.Second)
	if st.BootSlot != "rootfs.1" && st.BootSlot != "B" {
		t.Errorf("boot slot %q", st.BootSlot)
	}
	bl, _ = os.ReadFile(rig.blLog)
	if !strings.Contains(string(bl), "set-state B good") {
		t.Errorf("the daemon did not mark B good; bootloader log:\n%s", bl)
	}
	t.Logf("committed: %+v\nbootloader log:\n%s", st, bl)
	sameState(t, op, "after the RAUC update", slotsBefore, provID, provArgs, prov)
	wantFloor(t, state, "v1.0.0") // the older of v1.0.0 and 2.0.0
	_ = sup
}
