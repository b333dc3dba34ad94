package vmtest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// serveBundles serves the image's bundles to the guest, which reaches the host as
// 10.0.2.2 (QEMU's user network).
func serveBundles(t *testing.T, dir string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir))}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return fmt.Sprintf("http://10.0.2.2:%d", l.Addr().(*net.TCPAddr).Port)
}

func (vm *VM) updateArgs(base, name string) protocol.OTAUpdateArgs {
	vm.t.Helper()
	b, err := os.ReadFile(filepath.Join(vm.image, name))
	if err != nil {
		vm.t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return protocol.OTAUpdateArgs{URL: base + "/" + name, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(b))}
}

var slotRE = regexp.MustCompile(`rauc\.slot=(\w)`)

// bootedSlot is the slot GRUB booted, as the kernel command line says.
func (vm *VM) bootedSlot() string {
	vm.t.Helper()
	m := slotRE.FindStringSubmatch(vm.Sh("cat /proc/cmdline"))
	if m == nil {
		vm.t.Fatal("no rauc.slot= on the kernel command line")
	}
	return m[1]
}

// waitSlot waits for the machine to come up (again) booted from slot, however many
// boots that takes: each boot's shell announces itself once.
func (vm *VM) waitSlot(slot string, timeout time.Duration) {
	vm.t.Helper()
	for end := time.Now().Add(timeout); time.Now().Before(end); {
		if !vm.shell.waitReady(time.Until(end)) {
			break
		}
		if out, code := vm.shell.run("cat /proc/cmdline", 30*time.Second); code == 0 && strings.Contains(out, "rauc.slot="+slot) {
			return
		}
	}
	vm.t.Fatalf("the machine did not come up from slot %s within %v", slot, timeout)
}

// installTimeout is how long a bundle may take to download and install in the
// guest under software emulation on a loaded machine.
const installTimeout = 10 * time.Minute

func (c *controller) waitOTA(phase string, timeout time.Duration) protocol.OTAStatus {
	c.t.Helper()
	var st protocol.OTAStatus
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(2 * time.Second) {
		if st = decode[protocol.OTAStatus](c.t, c.call(protocol.CmdOTAStatus, nil, timeout)); st.Phase == phase {
			return st
		}
	}
	c.t.Fatalf("ota.status did not reach %s within %v: %+v", phase, timeout, st)
	return st
}

// TestOTA: RAUC updates through ota.update in the booted image, with GRUB choosing the
// slot. A good bundle installs into the other slot, boots and is committed; a bundle
// whose daemon never becomes healthy is marked bad and the machine comes back to the
// old slot by itself; a power cut in the middle of an install boots the old slot.
// The data partition (slots, audit trail) is the same throughout.
func TestOTA(t *testing.T) {
	vm := NewVM(t)
	vm.bootReady()
	if s := vm.bootedSlot(); s != "A" {
		t.Fatalf("the image booted slot %s", s)
	}
	c := newController(t, vm)
	hsms := decode[protocol.HSMListResult](t, c.call(protocol.CmdHSMList, nil, time.Minute))
	args := protocol.ProvisionArgs{HSM: hsms.HSMs[0].ID, Slot: "01", Mode: "generate", KeyType: "p256"}
	c.selfsign(c.call(protocol.CmdSlotProvision, args, 3*time.Minute))
	slots := slotStates(c.status())
	audit := c.audit()
	base := serveBundles(t, vm.image)
	kept := func(c *controller, what string) {
		c.t.Helper()
		if s := slotStates(c.status()); s != slots {
			c.t.Errorf("%s: slots %s, were %s", what, s, slots)
		}
		sameAudit(c.t, audit, c.audit())
	}

	// The broker is in the guest: while it reboots, ota.status cannot be asked, and
	// the phases in between (reboot, trial) can be over by the time it answers again.
	t.Run("good", func(t *testing.T) {
		vm, c := vm.For(t), c.For(t)
		bundle := "good.raucb"
		if strings.Contains(os.Getenv("VMTEST_BREAK"), "health") {
			t.Log("VMTEST_BREAK=health: the bundle whose daemon never becomes healthy, so never marks good")
			bundle = "bad.raucb"
		}
		start := time.Now()
		decode[protocol.OTAStatus](t, c.call(protocol.CmdOTAUpdate, vm.updateArgs(base, bundle), time.Minute))
		vm.waitSlot("B", installTimeout+bootTimeout)
		c.waitOTA(protocol.OTACommitted, 5*time.Minute)
		t.Logf("installed, rebooted and committed in %v", time.Since(start).Round(time.Second))
		if v := vm.Sh("cat /etc/iot-hsm-slot-version"); v != "v99.0.0" {
			t.Errorf("slot B holds %q, not the bundle's root filesystem", v)
		}
		if env := vm.Sh("grub-editenv /boot/efi/EFI/BOOT/grubenv list"); !strings.Contains(env, "B_OK=1") || !strings.Contains(env, "B_TRY=0") {
			t.Errorf("slot B not marked good in GRUB's environment:\n%s", env)
		}
		// The events before the reboot; the later ones are published while this
		// controller (a clean session) may still be reconnecting to the guest's broker.
		for _, p := range []string{protocol.OTADownload, protocol.OTAVerify, protocol.OTAInstall, protocol.OTAReboot} {
			if !slices.Contains(c.phases(), p) {
				t.Errorf("no %s event: %v", p, c.phases())
			}
		}
		kept(c, "after the update")
	})
	// Power cut while RAUC writes slot A, which was good until the install began:
	// RAUC marks it bad before writing, so GRUB boots the old slot B.
	t.Run("power-cut", func(t *testing.T) {
		// The parent's vm: Kill and Start replace its QEMU, which its cleanup ends.
		c := c.For(t)
		if env := vm.Sh("grub-editenv /boot/efi/EFI/BOOT/grubenv list"); !strings.Contains(env, "A_OK=1") {
			t.Fatalf("slot A is not good before the install:\n%s", env)
		}
		decode[protocol.OTAStatus](t, c.call(protocol.CmdOTAUpdate, vm.updateArgs(base, "good.raucb"), time.Minute))
		c.waitOTA(protocol.OTAInstall, installTimeout)
		time.Sleep(3 * time.Second)
		vm.Kill()
		vm.Start()
		vm.waitSlot("B", bootTimeout)
		vm.waitUnit(bootTimeout, func(unit) bool { return true })
		if env := vm.Sh("grub-editenv /boot/efi/EFI/BOOT/grubenv list"); !strings.Contains(env, "A_OK=0") {
			t.Errorf("the half-written slot A is still marked good:\n%s", env)
		}
		if st := decode[protocol.OTAStatus](t, c.call(protocol.CmdOTAStatus, nil, time.Minute)); st.Phase != protocol.OTAFailed || !strings.Contains(st.Error, "interrupted") {
			t.Errorf("ota.status does not report the update as interrupted: %+v", st)
		}
		kept(c, "after the power cut")
	})
	t.Run("bad", func(t *testing.T) {
		vm, c := vm.For(t), c.For(t)
		if strings.Contains(os.Getenv("VMTEST_BREAK"), "fallback") {
			// GRUB that boots ORDER's first slot whatever RAUC marked: no fallback.
			t.Log("VMTEST_BREAK=fallback: grub.cfg without the A/B checks")
			vm.Sh(`sed -i 's/-a "$A_OK" = "1" -a "$A_TRY" = "0"//; s/-a "$B_OK" = "1" -a "$B_TRY" = "0"//' /boot/efi/EFI/BOOT/grub.cfg`)
		}
		decode[protocol.OTAStatus](t, c.call(protocol.CmdOTAUpdate, vm.updateArgs(base, "bad.raucb"), time.Minute))
		vm.waitSlot("A", installTimeout+bootTimeout)
		t.Log("booted the bad slot A; waiting for it to give up")
		vm.waitSlot("B", bootTimeout+2*time.Minute)
		st := c.waitOTA(protocol.OTARolledBack, 3*time.Minute)
		t.Logf("rolled back: %+v", st)
		if env := vm.Sh("grub-editenv /boot/efi/EFI/BOOT/grubenv list"); !strings.Contains(env, "A_OK=0") {
			t.Errorf("slot A not marked bad:\n%s", env)
		}
		kept(c, "after the rollback")
	})
}
