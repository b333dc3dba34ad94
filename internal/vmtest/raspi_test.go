package vmtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// The Raspberry Pi image (FLAVOR=raspi) in QEMU's raspi3b: QEMU starts U-Boot the way
// the Pi's GPU firmware does (QEMU does not run that firmware, so config.txt is not
// read), U-Boot runs the image's boot.scr from the FAT partition, and the kernel,
// initrd and device tree come from the slot it chooses. raspi3b has one usable
// serial port (the Pi 3's PL011 carries Bluetooth), and USB devices given to it do
// not enumerate with the image's kernel, so there is no network and no shell: the
// test reads the console and the SD card. U-Boot's environment (uboot.env) is where
// the boot script and RAUC's uboot backend meet.

// piDiskID is image/build.sh's RASPI_DISKID: the partitions' PARTUUID prefix.
const piDiskID = "1075a1f0"

// pi is one raspi3b machine on a copy of the image, its SD card.
type pi struct {
	t        *testing.T
	dir      string
	firmware string // the image's FAT partition's files (u-boot.bin, the device trees)
	cmd      *exec.Cmd
	exited   chan struct{}
	boots    int // QEMU runs so far; a guest reset ends one (-no-reboot)
}

func newPi(t *testing.T) *pi {
	t.Helper()
	image := imageDir(t)
	dir := t.TempDir()
	p := &pi{t: t, dir: dir, firmware: filepath.Join(image, "firmware")}
	// QEMU's SD card must be a power of two in size.
	run(t, "cp", "--sparse=always", filepath.Join(image, "disk.img"), p.disk())
	run(t, "truncate", "-s", "4G", p.disk())
	t.Cleanup(func() {
		p.off()
		if t.Failed() {
			b, _ := os.ReadFile(p.console())
			t.Logf("serial console (last 6000 bytes):\n%s", tail(b, 6000))
		}
	})
	return p
}

func (p *pi) disk() string    { return filepath.Join(p.dir, "sd.img") }
func (p *pi) console() string { return filepath.Join(p.dir, "console.log") }

// on starts the machine; what it writes on the console from now on is boot p.boots.
func (p *pi) on() {
	p.t.Helper()
	p.markConsole(fmt.Sprintf("\n@@POWER-ON %d@@\n", p.boots+1))
	cmd := exec.Command("nice", "-n", "10", "qemu-system-aarch64", "-M", "raspi3b", "-no-reboot",
		"-kernel", filepath.Join(p.firmware, "u-boot.bin"),
		"-dtb", filepath.Join(p.firmware, "bcm2837-rpi-3-b.dtb"),
		"-drive", "if=sd,format=raw,file="+p.disk(),
		"-display", "none", "-monitor", "none",
		// The PL011, then the mini UART: the kernel's console=ttyS1 and U-Boot's.
		"-serial", "null",
		"-chardev", "file,id=con,append=on,path="+p.console(), "-serial", "chardev:con")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("qemu: %v", err)
	}
	p.boots++
	p.cmd, p.exited = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(p.exited)
}

// markConsole appends a line of the test's own to the console file, between boots.
func (p *pi) markConsole(line string) {
	f, err := os.OpenFile(p.console(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		p.t.Fatal(err)
	}
}

// off cuts the power.
func (p *pi) off() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.exited
	p.cmd = nil
}

// thisBoot is the console since the last power-on.
func (p *pi) thisBoot() string {
	b, _ := os.ReadFile(p.console())
	s := string(b)
	if i := strings.LastIndex(s, "@@POWER-ON "); i >= 0 {
		return s[i:]
	}
	return s
}

// waitFor waits until the console of this boot matches re and returns the match.
func (p *pi) waitFor(re string, timeout time.Duration) []string {
	p.t.Helper()
	rx := regexp.MustCompile(re)
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		// Whether QEMU had ended is taken before the console is read: what it wrote
		// just before a reset still counts.
		var ended bool
		select {
		case <-p.exited:
			ended = true
		default:
		}
		if m := rx.FindStringSubmatch(p.thisBoot()); m != nil {
			return m
		}
		if ended {
			p.t.Fatalf("the machine reset while waiting for %q", re)
		}
	}
	p.t.Fatalf("the console did not show %q within %v", re, timeout)
	return nil
}

// reset waits for the guest to reset, which ends QEMU (-no-reboot), and powers the
// machine on again, as a board's reset restarts it.
func (p *pi) reset(timeout time.Duration) {
	p.t.Helper()
	select {
	case <-p.exited:
		p.cmd = nil
		p.on()
	case <-time.After(timeout):
		p.t.Fatalf("the machine did not reset within %v", timeout)
	}
}

// The environment lives in uboot.env on the FAT partition (1 MiB into the disk):
// CRC-32 of the rest, then name=value strings, each ended by a NUL, an empty one
// last (U-Boot's CONFIG_ENV_IS_IN_FAT, 16 KiB in Debian's u-boot-rpi).
const envSize = 0x4000

func (p *pi) fat() string { return p.disk() + "@@1048576" }

// env reads U-Boot's environment from the SD card (the machine is off).
func (p *pi) env() map[string]string {
	p.t.Helper()
	f := filepath.Join(p.dir, "uboot.env")
	os.Remove(f)
	run(p.t, "mcopy", "-n", "-i", p.fat(), "::uboot.env", f)
	b, err := os.ReadFile(f)
	if err != nil {
		p.t.Fatal(err)
	}
	env, err := parseEnv(b)
	if err != nil {
		p.t.Fatalf("uboot.env: %v", err)
	}
	return env
}

// setEnv changes variables in the environment on the SD card (the machine is off).
func (p *pi) setEnv(vars map[string]string) {
	p.t.Helper()
	env := p.env()
	for k, v := range vars {
		env[k] = v
	}
	f := filepath.Join(p.dir, "uboot.env")
	if err := os.WriteFile(f, formatEnv(env), 0o644); err != nil {
		p.t.Fatal(err)
	}
	run(p.t, "mcopy", "-o", "-i", p.fat(), f, "::uboot.env")
}

func parseEnv(b []byte) (map[string]string, error) {
	if len(b) != envSize {
		return nil, fmt.Errorf("%d bytes, want %d", len(b), envSize)
	}
	if crc32.ChecksumIEEE(b[4:]) != binary.LittleEndian.Uint32(b) {
		return nil, errors.New("bad CRC: U-Boot would ignore it")
	}
	env := map[string]string{}
	for _, kv := range bytes.Split(b[4:], []byte{0}) {
		if len(kv) == 0 {
			break
		}
		k, v, _ := strings.Cut(string(kv), "=")
		env[k] = v
	}
	return env, nil
}

func formatEnv(env map[string]string) []byte {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b := make([]byte, envSize)
	data := b[4:4]
	for _, k := range keys {
		data = append(data, k+"="+env[k]+"\x00"...)
	}
	binary.LittleEndian.PutUint32(b, crc32.ChecksumIEEE(b[4:]))
	return b
}

// copySlot writes root filesystem A into slot B, as an installed update would.
func (p *pi) copySlot() {
	p.t.Helper()
	const mb = 1 << 20
	a, b := int64(1+64)*mb, int64(1+64+768)*mb // image/build.sh's ESP_MB and SLOT_MB
	f, err := os.OpenFile(p.disk(), os.O_RDWR, 0)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4*mb)
	for off := int64(0); off < 768*mb; off += int64(len(buf)) {
		if _, err := f.ReadAt(buf, a+off); err != nil {
			p.t.Fatal(err)
		}
		if _, err := f.WriteAt(buf, b+off); err != nil {
			p.t.Fatal(err)
		}
	}
}

// breakBootCount, when VMTEST_BREAK names bootcount, puts a boot.scr on the card that
// ignores the attempts left, so the first slot in BOOT_ORDER always boots: the
// fallback check must then fail. It shows that the check can fail; never set in CI.
func (p *pi) breakBootCount() {
	p.t.Helper()
	if !strings.Contains(","+os.Getenv("VMTEST_BREAK")+",", ",bootcount,") {
		return
	}
	p.t.Log("VMTEST_BREAK=bootcount: boot.scr without the attempts-left checks")
	src, err := os.ReadFile(filepath.Join(p.firmware, "boot.cmd"))
	if err != nil {
		p.t.Fatal(err)
	}
	cmd, scr := filepath.Join(p.dir, "boot.cmd"), filepath.Join(p.dir, "boot.scr")
	broken := strings.NewReplacer(" && test ${BOOT_A_LEFT} -gt 0", "", " && test ${BOOT_B_LEFT} -gt 0", "")
	if err := os.WriteFile(cmd, []byte(broken.Replace(string(src))), 0o644); err != nil {
		p.t.Fatal(err)
	}
	run(p.t, "mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-d", cmd, scr)
	run(p.t, "mcopy", "-o", "-i", p.fat(), scr, "::boot.scr")
}

const piBootTimeout = 20 * time.Minute

// booted waits for U-Boot's choice and for a ready, committed system in that slot:
// iot-hsm.service active (Type=notify: after READY=1), RAUC's mark-good done, and
// RAUC saying it booted that slot.
func (p *pi) booted(slot string) {
	p.t.Helper()
	start := time.Now()
	// U-Boot's setexpr counts in hex: a counter taken below zero shows as ffff...
	m := p.waitFor(`iot-hsm: booting slot ([AB]) \(attempts left: A (\w+), B (\w+)\)`, 5*time.Minute)
	if m[1] != slot {
		p.t.Fatalf("U-Boot chose slot %s, want %s (%s)", m[1], slot, m[0])
	}
	p.waitFor(`Kernel command line: .*root=PARTUUID=`+piDiskID+`-0`+map[string]string{"A": "2", "B": "3"}[slot]+
		` .*rauc\.slot=`+slot, 5*time.Minute)
	// image/test's iot-hsm-vmtest-report.service, after the daemon's READY and RAUC's
	// mark-good.
	r := p.waitFor(`iot-hsm-vmtest: iot-hsm\.service (\S+); mark-good (\S+); booted (\S+)`, piBootTimeout)
	if r[1] != "active" || r[2] != "success" || r[3] != slot {
		p.t.Fatalf("%s: want iot-hsm.service active, mark-good success, booted %s", r[0], slot)
	}
	p.t.Logf("boot %d: slot %s, %s; ready and marked good after %v", p.boots, slot, m[0],
		time.Since(start).Round(time.Second))
}

func TestRaspberryPi(t *testing.T) {
	if os.Getenv("IOT_HSM_VM_FLAVOR") != "raspi" {
		t.Skip("the Raspberry Pi image: make vm-test ARCH=arm64 FLAVOR=raspi")
	}
	p := newPi(t)

	t.Run("first boot: slot A, marked good", func(t *testing.T) {
		p.t = t
		p.on()
		p.booted("A")
		// The machine is cut off a moment after mark-good: /boot/firmware is mounted
		// sync, so what RAUC wrote is on the card.
		time.Sleep(3 * time.Second)
		p.off()
		env := p.env()
		if env["BOOT_ORDER"] != "A B" || env["BOOT_A_LEFT"] != "3" || env["BOOT_B_LEFT"] != "0" {
			t.Fatalf("after a good boot of A: BOOT_ORDER=%q BOOT_A_LEFT=%q BOOT_B_LEFT=%q, want \"A B\", 3 (mark-good "+
				"gave back the attempt U-Boot took), 0", env["BOOT_ORDER"], env["BOOT_A_LEFT"], env["BOOT_B_LEFT"])
		}
	})

	// What an install does to the environment (RAUC's mark-active: the slot first,
	// fresh attempts), but B holds nothing bootable: U-Boot cannot load a kernel,
	// resets, and the next boot is A's, with B's attempt spent.
	t.Run("an unbootable slot B falls back to A", func(t *testing.T) {
		p.t = t
		p.breakBootCount()
		p.setEnv(map[string]string{"BOOT_ORDER": "B A", "BOOT_B_LEFT": "1"})
		p.on()
		p.waitFor(`iot-hsm: booting slot B`, 5*time.Minute)
		p.reset(2 * time.Minute)
		p.booted("A")
		time.Sleep(3 * time.Second)
		p.off()
		if env := p.env(); env["BOOT_B_LEFT"] != "0" || env["BOOT_A_LEFT"] != "3" {
			t.Fatalf("after B failed: BOOT_B_LEFT=%q BOOT_A_LEFT=%q, want 0 and 3", env["BOOT_B_LEFT"], env["BOOT_A_LEFT"])
		}
	})

	t.Run("an installed slot B boots and is committed", func(t *testing.T) {
		p.t = t
		p.copySlot()
		p.setEnv(map[string]string{"BOOT_ORDER": "B A", "BOOT_B_LEFT": "3"})
		p.on()
		p.booted("B")
		time.Sleep(3 * time.Second)
		p.off()
		if env := p.env(); env["BOOT_B_LEFT"] != "3" {
			t.Fatalf("after a good boot of B: BOOT_B_LEFT=%q, want 3: RAUC did not mark the booted slot B good",
				env["BOOT_B_LEFT"])
		}
	})
}
