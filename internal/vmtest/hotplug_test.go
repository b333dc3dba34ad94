package vmtest

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
	"github.com/iot-hsm/iot-hsm/protocol"
)

const ykSerial = 12345678

// replugs is how many pull-and-plug cycles the check makes. Each must connect the
// slot within a second of pcscd reading the card, and on average within half of
// one: the hotplug watcher rescans within its 150 ms debounce of pcscd's event,
// while the periodic 2 s scan alone averages a second and stays under half a
// second over five plugs less than once in a hundred runs.
const (
	replugs = 5
	maxLag  = time.Second
	meanLag = 500 * time.Millisecond
)

// yubikey is the virtual YubiKey as a USB device of the guest: a QEMU usb-redir
// device whose chardev vyubikey serves, with a YubiKey's USB descriptors and CCID
// interface. (QEMU's own usb-ccid reader would be the simpler path, but on QEMU 7.2
// it declares T=0 only, libccid then refuses the T=1 that piv-go insists on.)
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

// plug connects QEMU to the card and adds it to the guest's USB bus, as plugging
// the key into a port would.
func (y *yubikey) plug() {
	t := y.vm.t
	t.Helper()
	y.n++
	id := "yk" + strconv.Itoa(y.n)
	if out := y.vm.Monitor("chardev-add socket,id=" + id + ",path=" + y.sock); strings.Contains(out, "rror") {
		t.Fatalf("chardev-add: %s", out)
	}
	conn, err := y.l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		// io.EOF when the key is pulled; anything else is the card's own failure.
		if err := y.card.ServeUSBRedir(conn); err != nil && !strings.Contains(err.Error(), "EOF") {
			t.Logf("vyubikey: %v", err)
		}
	}()
	if out := y.vm.Monitor("device_add usb-redir,id=dev" + id + ",chardev=" + id + ",bus=xhci.0"); strings.Contains(out, "rror") {
		t.Fatalf("device_add usb-redir: %s", out)
	}
}

// pull removes the key from the guest's USB bus and closes its chardev.
func (y *yubikey) pull() {
	t := y.vm.t
	t.Helper()
	id := "yk" + strconv.Itoa(y.n)
	if out := y.vm.Monitor("device_del dev" + id); strings.Contains(out, "rror") {
		t.Fatalf("device_del: %s", out)
	}
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if !strings.Contains(y.vm.Monitor("info usb"), "dev"+id) {
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

func ykConnected(st protocol.Status) bool { s, ok := ykSlot(st); return ok && s.Connected }

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

func statusTopic() string { return protocol.DefaultRoot + "/" + deviceID + "/status" }

// pushedSince is the first status document published after the first n for which
// ok holds: what a dashboard following the retained status topic shows. It may
// arrive after the reply to a status request that already showed the same.
func (c *controller) pushedSince(n int, ok func(protocol.Status) bool) (protocol.Status, bool) {
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		for _, p := range c.Messages(statusTopic())[n:] {
			var st protocol.Status
			if json.Unmarshal(p, &st) == nil && ok(st) {
				return st, true
			}
		}
	}
	return protocol.Status{}, false
}

// pcscdATRs are the times, on the guest's clock, at which the guest's pcscd powered
// a card and read its ATR (its "Card ATR:" lines, pcscd at --info in the test
// image): a key is usable to every PC/SC program from then on.
func (vm *VM) pcscdATRs() []time.Time {
	vm.t.Helper()
	out, _ := vm.Try("journalctl -b -u pcscd -o short-unix --no-pager | grep 'Card ATR:'")
	var ts []time.Time
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		sec, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			vm.t.Fatalf("pcscd's log line %q: %v", line, err)
		}
		ts = append(ts, time.Unix(0, int64(sec*1e9)))
	}
	return ts
}

// hotplugLogs is what the guest says about the key when the check fails.
func (vm *VM) hotplugLogs() string {
	out, _ := vm.Try("dmesg | grep -i -E 'usb|ccid' | tail -15; journalctl -b --no-pager -u pcscd | tail -25; " +
		"journalctl -b --no-pager -u iot-hsm | tail -25")
	return out
}

// breakHotplug, when VMTEST_BREAK names hotplug, turns the daemon's hotplug watcher
// off ([yubikey] is the test configuration's last table) and restarts the daemon:
// the check must then fail.
func (vm *VM) breakHotplug() {
	vm.t.Helper()
	if !strings.Contains(","+os.Getenv("VMTEST_BREAK")+",", ",hotplug,") {
		return
	}
	vm.t.Log("VMTEST_BREAK=hotplug: [yubikey] hotplug = false")
	vm.Sh("echo 'hotplug = false' >> /etc/iot-hsm/config.toml && systemctl restart iot-hsm")
}

// TestHotplug: a YubiKey arrives and leaves as a USB device of the guest; the kernel's
// uevent reaches pcscd's CCID driver and the daemon, the status shows the key come and
// go, and a provisioned slot on it connects again, by serial, within a second of
// pcscd reading the card's ATR each time, and within half a second on average.
func TestHotplug(t *testing.T) {
	vm := NewVM(t)
	vm.bootReady()
	vm.breakHotplug()
	c := newController(t, vm)
	c.Watch(statusTopic())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the guest says:\n%s", vm.hotplugLogs())
		}
	})
	yk := newYubiKey(t, vm)
	start := time.Now()
	yk.plug()
	c.waitStatus("the YubiKey appears", 2*time.Minute, ykPresent)
	t.Logf("first plug: present in the status after %v (USB enumeration, driver, pcscd)", time.Since(start).Round(time.Millisecond))
	hsm := fmt.Sprintf("yubikey-%d", ykSerial)
	args := protocol.ProvisionArgs{HSM: hsm, Slot: "9a", Mode: "generate", KeyType: "p256"}
	c.selfsign(c.provisionWhenFree(args))
	c.waitStatus("the slot connects", time.Minute, ykConnected)

	var sum time.Duration
	for i := 1; i <= replugs; i++ {
		sum += replug(t, vm, c, yk, i)
	}
	if mean := sum / replugs; mean > meanLag {
		t.Errorf("the slot connected on average %v after pcscd read the card's ATR, want within %v", mean.Round(time.Millisecond), meanLag)
	}
	if s, _ := ykSlot(c.status()); s.State != "provisioned" || !strings.Contains(s.SlotID, hsm) {
		t.Fatalf("after the replugs the slot is %+v, want %s/9a provisioned", s, hsm)
	}
}

// provisionWhenFree sends slot.provision again while the daemon answers busy, as a
// PKI would: just after a plug the daemon's own scan may still hold the card.
func (c *controller) provisionWhenFree(args protocol.ProvisionArgs) protocol.Reply {
	c.t.Helper()
	for end := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		r := c.call(protocol.CmdSlotProvision, args, 3*time.Minute)
		if r.OK || r.Error == nil || r.Error.Code != protocol.CodeBusy || time.Now().After(end) {
			return r
		}
		c.t.Logf("slot.provision: %s; again", r.Error.Message)
	}
}

// replug pulls the key, checks the status says so, plugs it again and checks that
// the slot connects within a second of pcscd reading the card's ATR; it returns
// how long after that the status said so.
func replug(t *testing.T, vm *VM, c *controller, yk *yubikey, i int) time.Duration {
	t.Helper()
	yk.pull()
	d := c.waitStatus("the YubiKey leaves", time.Minute, func(st protocol.Status) bool {
		return !ykPresent(st) && !ykConnected(st)
	})
	t.Logf("pull %d: absent in the status after %v", i, d.Round(time.Millisecond))

	n, atrs := len(c.Messages(statusTopic())), len(vm.pcscdATRs())
	yk.plug()
	d = c.waitStatus("the slot connects again", time.Minute, ykConnected)
	pushed, ok := c.pushedSince(n, ykConnected)
	if !ok {
		t.Fatalf("plug %d: no status document showing the slot connected was published", i)
	}
	now := vm.pcscdATRs()
	if len(now) <= atrs {
		t.Fatalf("plug %d: pcscd never read the card's ATR:\n%s", i, vm.Sh("journalctl -b -u pcscd --no-pager | tail -20"))
	}
	lag := pushed.Time.Sub(now[atrs])
	t.Logf("plug %d: connected in the status %v after device_add; published %v after pcscd read the ATR",
		i, d.Round(time.Millisecond), lag.Round(time.Millisecond))
	if lag > maxLag || lag < 0 {
		t.Errorf("plug %d: the slot connected %v after pcscd read the card's ATR, want within %v", i, lag.Round(time.Millisecond), maxLag)
	}
	return lag
}
