package vmtest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
	"github.com/iot-hsm/iot-hsm/protocol"
)

const ykSerial = 12345678

// yubikey is the virtual YubiKey as a USB device of the guest: QEMU's usb-ccid reader
// with a ccid-card-passthru card whose chardev is served by vyubikey (VSCard).
type yubikey struct {
	vm   *VM
	card *vyubikey.Card
	sock string
	l    net.Listener
	n    int
}

func newYubiKey(t *testing.T, vm *VM) *yubikey {
	t.Helper()
	card, err := vyubikey.New(vyubikey.Config{StatePath: filepath.Join(t.TempDir(), "yk.json"), Serial: ykSerial})
	if err != nil {
		t.Fatal(err)
	}
	y := &yubikey{vm: vm, card: card, sock: vm.path("yk.sock")}
	os.Remove(y.sock)
	if y.l, err = net.Listen("unix", y.sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { y.l.Close() })
	return y
}

// plug connects QEMU to the card and adds the reader with the card to the guest's
// USB bus, as plugging the key into a port would.
func (y *yubikey) plug() {
	t := y.vm.t
	t.Helper()
	y.n++
	id := "yk" + string(rune('0'+y.n))
	if out := y.vm.Monitor("chardev-add socket,id=" + id + ",path=" + y.sock); strings.Contains(out, "rror") {
		t.Fatalf("chardev-add: %s", out)
	}
	conn, err := y.l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	go y.card.ServeVSCard(conn)
	if out := y.vm.Monitor("device_add usb-ccid,id=ccid" + id + ",bus=xhci.0"); strings.Contains(out, "rror") {
		t.Fatalf("device_add usb-ccid: %s", out)
	}
	if out := y.vm.Monitor("device_add ccid-card-passthru,id=card" + id + ",chardev=" + id + ",bus=ccid" + id + ".0"); strings.Contains(out, "rror") {
		t.Fatalf("device_add ccid-card-passthru: %s", out)
	}
}

// pull removes the reader from the guest's USB bus and closes the card's chardev.
func (y *yubikey) pull() {
	t := y.vm.t
	t.Helper()
	id := "yk" + string(rune('0'+y.n))
	if out := y.vm.Monitor("device_del ccid" + id); strings.Contains(out, "rror") {
		t.Fatalf("device_del: %s", out)
	}
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if !strings.Contains(y.vm.Monitor("info usb"), "CCID") {
			break
		}
	}
	y.vm.Monitor("chardev-remove " + id)
}

// ykSlot is the YubiKey's slot 9a in the status document, if the key is there.
func ykSlot(st protocol.Status) (protocol.StatusSlot, bool) {
	for _, s := range st.Slots {
		if strings.HasPrefix(s.SlotID, "yubikey-") && strings.HasSuffix(s.SlotID, "/9a") {
			return s, true
		}
	}
	return protocol.StatusSlot{}, false
}

func ykPresent(st protocol.Status) bool {
	for _, h := range st.HSMs {
		if strings.HasPrefix(h.ID, "yubikey-") && h.Present {
			return true
		}
	}
	return false
}

// waitStatus polls the status document until ok, returning how long that took.
func (c *controller) waitStatus(what string, timeout time.Duration, ok func(protocol.Status) bool) time.Duration {
	c.t.Helper()
	start := time.Now()
	for time.Since(start) < timeout {
		if ok(c.status()) {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("%s: not within %v: %+v", what, timeout, c.status())
	return 0
}

// TestHotplug: a YubiKey arrives and leaves as a USB device of the guest; the kernel's
// uevent reaches pcscd's CCID driver and the daemon, and a provisioned slot on it
// connects again within a second of the key coming back.
func TestHotplug(t *testing.T) {
	vm := NewVM(t)
	vm.bootReady()
	c := newController(t, vm)
	yk := newYubiKey(t, vm)
	yk.plug()
	d := c.waitStatus("the YubiKey appears", 2*time.Minute, ykPresent)
	t.Logf("first plug: present after %v", d)
	hsm := fmt.Sprintf("yubikey-%d", ykSerial)
	args := protocol.ProvisionArgs{HSM: hsm, Slot: "9a", Mode: "generate", KeyType: "p256"}
	c.selfsign(c.call(protocol.CmdSlotProvision, args, 3*time.Minute))
	c.waitStatus("the slot connects", time.Minute, func(st protocol.Status) bool { s, ok := ykSlot(st); return ok && s.Connected })

	yk.pull()
	d = c.waitStatus("the YubiKey leaves", time.Minute, func(st protocol.Status) bool { return !ykPresent(st) })
	t.Logf("pulled: absent after %v", d)
	if out := vm.Sh("journalctl -u iot-hsm -b --no-pager | tail -20"); !strings.Contains(out, "yubikey") {
		t.Logf("daemon log:\n%s", out)
	}

	yk.plug()
	d = c.waitStatus("the slot connects again", time.Minute, func(st protocol.Status) bool { s, ok := ykSlot(st); return ok && s.Connected })
	t.Logf("plugged again: slot connected after %v", d)
	if d > time.Second {
		t.Errorf("the slot connected %v after the key came back, more than 1s", d)
	}
}
