package hotplug

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// The payloads below are written byte for byte as the kernel multicasts
// them (lib/kobject_uevent.c: "ACTION@DEVPATH\0" then "KEY=VALUE\0" for
// each variable, SEQNUM last) for a YubiKey 5 NFC (1050:0407, bcdDevice
// 5.71, interfaces 0 keyboard/OTP, 1 FIDO, 2 CCID) plugged into port 2 of
// bus 1 and pulled out again, in the order the kernel sends them.
const (
	ykDev  = "/devices/pci0000:00/0000:00:14.0/usb1/1-2"
	ykIf0  = ykDev + "/1-2:1.0"
	ykIf1  = ykDev + "/1-2:1.1"
	ykIf2  = ykDev + "/1-2:1.2"
	ykHID0 = ykIf0 + "/0003:1050:0407.0009"
)

type ueventCase struct {
	name      string
	msg       string
	smartCard bool
}

var yubikeyPlug = []ueventCase{
	{"usb_device add", "add@" + ykDev + "\x00ACTION=add\x00DEVPATH=" + ykDev + "\x00SUBSYSTEM=usb\x00" +
		"MAJOR=189\x00MINOR=6\x00DEVNAME=bus/usb/001/007\x00DEVTYPE=usb_device\x00" +
		"PRODUCT=1050/407/571\x00TYPE=0/0/0\x00BUSNUM=001\x00DEVNUM=007\x00SEQNUM=4211\x00", true},
	{"HID keyboard interface add", "add@" + ykIf0 + "\x00ACTION=add\x00DEVPATH=" + ykIf0 + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00PRODUCT=1050/407/571\x00TYPE=0/0/0\x00INTERFACE=3/1/1\x00" +
		"MODALIAS=usb:v1050p0407d0571dc00dsc00dp00ic03isc01ip01in00\x00SEQNUM=4212\x00", true},
	// The hid child is announced by its own subsystem; the interface above
	// already counted.
	{"hid child add", "add@" + ykHID0 + "\x00ACTION=add\x00DEVPATH=" + ykHID0 + "\x00SUBSYSTEM=hid\x00" +
		"HID_ID=0003:00001050:00000407\x00HID_NAME=Yubico YubiKey OTP+FIDO+CCID\x00" +
		"HID_PHYS=usb-0000:00:14.0-2/input0\x00HID_UNIQ=\x00MODALIAS=hid:b0003g0001v00001050p00000407\x00SEQNUM=4213\x00", false},
	{"hid child bind", "bind@" + ykHID0 + "\x00ACTION=bind\x00DEVPATH=" + ykHID0 + "\x00SUBSYSTEM=hid\x00DRIVER=hid-generic\x00" +
		"HID_ID=0003:00001050:00000407\x00HID_NAME=Yubico YubiKey OTP+FIDO+CCID\x00" +
		"HID_PHYS=usb-0000:00:14.0-2/input0\x00HID_UNIQ=\x00MODALIAS=hid:b0003g0001v00001050p00000407\x00SEQNUM=4219\x00", false},
	{"HID keyboard interface bind", "bind@" + ykIf0 + "\x00ACTION=bind\x00DEVPATH=" + ykIf0 + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00DRIVER=usbhid\x00PRODUCT=1050/407/571\x00TYPE=0/0/0\x00INTERFACE=3/1/1\x00" +
		"MODALIAS=usb:v1050p0407d0571dc00dsc00dp00ic03isc01ip01in00\x00SEQNUM=4220\x00", true},
	{"FIDO interface add", "add@" + ykIf1 + "\x00ACTION=add\x00DEVPATH=" + ykIf1 + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00PRODUCT=1050/407/571\x00TYPE=0/0/0\x00INTERFACE=3/0/0\x00" +
		"MODALIAS=usb:v1050p0407d0571dc00dsc00dp00ic03isc00ip00in01\x00SEQNUM=4221\x00", true},
	{"CCID interface add", "add@" + ykIf2 + "\x00ACTION=add\x00DEVPATH=" + ykIf2 + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00PRODUCT=1050/407/571\x00TYPE=0/0/0\x00INTERFACE=11/0/0\x00" +
		"MODALIAS=usb:v1050p0407d0571dc00dsc00dp00ic0Bisc00ip00in02\x00SEQNUM=4229\x00", true},
	{"usb_device bind", "bind@" + ykDev + "\x00ACTION=bind\x00DEVPATH=" + ykDev + "\x00SUBSYSTEM=usb\x00" +
		"MAJOR=189\x00MINOR=6\x00DEVNAME=bus/usb/001/007\x00DEVTYPE=usb_device\x00DRIVER=usb\x00" +
		"PRODUCT=1050/407/571\x00TYPE=0/0/0\x00BUSNUM=001\x00DEVNUM=007\x00SEQNUM=4230\x00", true},
}

var yubikeyUnplug = []ueventCase{
	{"HID keyboard interface unbind", "unbind@" + ykIf0 + "\x00ACTION=unbind\x00DEVPATH=" + ykIf0 + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00PRODUCT=1050/407/571\x00TYPE=0/0/0\x00INTERFACE=3/1/1\x00" +
		"MODALIAS=usb:v1050p0407d0571dc00dsc00dp00ic03isc01ip01in00\x00SEQNUM=4240\x00", true},
	{"hid child remove", "remove@" + ykHID0 + "\x00ACTION=remove\x00DEVPATH=" + ykHID0 + "\x00SUBSYSTEM=hid\x00" +
		"HID_ID=0003:00001050:00000407\x00HID_NAME=Yubico YubiKey OTP+FIDO+CCID\x00" +
		"HID_PHYS=usb-0000:00:14.0-2/input0\x00HID_UNIQ=\x00MODALIAS=hid:b0003g0001v00001050p00000407\x00SEQNUM=4241\x00", false},
	{"HID keyboard interface remove", "remove@" + ykIf0 + "\x00ACTION=remove\x00DEVPATH=" + ykIf0 + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00PRODUCT=1050/407/571\x00TYPE=0/0/0\x00INTERFACE=3/1/1\x00" +
		"MODALIAS=usb:v1050p0407d0571dc00dsc00dp00ic03isc01ip01in00\x00SEQNUM=4245\x00", true},
	{"CCID interface remove", "remove@" + ykIf2 + "\x00ACTION=remove\x00DEVPATH=" + ykIf2 + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00PRODUCT=1050/407/571\x00TYPE=0/0/0\x00INTERFACE=11/0/0\x00" +
		"MODALIAS=usb:v1050p0407d0571dc00dsc00dp00ic0Bisc00ip00in02\x00SEQNUM=4252\x00", true},
	{"usb_device unbind", "unbind@" + ykDev + "\x00ACTION=unbind\x00DEVPATH=" + ykDev + "\x00SUBSYSTEM=usb\x00" +
		"MAJOR=189\x00MINOR=6\x00DEVNAME=bus/usb/001/007\x00DEVTYPE=usb_device\x00" +
		"PRODUCT=1050/407/571\x00TYPE=0/0/0\x00BUSNUM=001\x00DEVNUM=007\x00SEQNUM=4253\x00", true},
	{"usb_device remove", "remove@" + ykDev + "\x00ACTION=remove\x00DEVPATH=" + ykDev + "\x00SUBSYSTEM=usb\x00" +
		"MAJOR=189\x00MINOR=6\x00DEVNAME=bus/usb/001/007\x00DEVTYPE=usb_device\x00" +
		"PRODUCT=1050/407/571\x00TYPE=0/0/0\x00BUSNUM=001\x00DEVNUM=007\x00SEQNUM=4254\x00", true},
}

const (
	stickDev = "/devices/pci0000:00/0000:00:14.0/usb1/1-3"
	stickIf  = stickDev + "/1-3:1.0"
	omniDev  = "/devices/pci0000:00/0000:00:14.0/usb1/1-4"
	omniIf   = omniDev + "/1-4:1.0"
)

var otherEvents = []ueventCase{
	{"net lo change", "change@/devices/virtual/net/lo\x00ACTION=change\x00DEVPATH=/devices/virtual/net/lo\x00" +
		"SUBSYSTEM=net\x00INTERFACE=lo\x00IFINDEX=1\x00SEQNUM=4300\x00", false},
	// A SanDisk USB stick: mass storage, class 8.
	{"mass storage device add", "add@" + stickDev + "\x00ACTION=add\x00DEVPATH=" + stickDev + "\x00SUBSYSTEM=usb\x00" +
		"MAJOR=189\x00MINOR=7\x00DEVNAME=bus/usb/001/008\x00DEVTYPE=usb_device\x00" +
		"PRODUCT=781/5567/100\x00TYPE=0/0/0\x00BUSNUM=001\x00DEVNUM=008\x00SEQNUM=4301\x00", false},
	{"mass storage interface add", "add@" + stickIf + "\x00ACTION=add\x00DEVPATH=" + stickIf + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00PRODUCT=781/5567/100\x00TYPE=0/0/0\x00INTERFACE=8/6/80\x00" +
		"MODALIAS=usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00\x00SEQNUM=4302\x00", false},
	{"mass storage interface remove", "remove@" + stickIf + "\x00ACTION=remove\x00DEVPATH=" + stickIf + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00PRODUCT=781/5567/100\x00TYPE=0/0/0\x00INTERFACE=8/6/80\x00" +
		"MODALIAS=usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00\x00SEQNUM=4310\x00", false},
	{"block disk add", "add@" + stickIf + "/host0/target0:0:0/0:0:0:0/block/sda\x00ACTION=add\x00" +
		"DEVPATH=" + stickIf + "/host0/target0:0:0/0:0:0:0/block/sda\x00SUBSYSTEM=block\x00MAJOR=8\x00MINOR=0\x00" +
		"DEVNAME=sda\x00DEVTYPE=disk\x00DISKSEQ=9\x00SEQNUM=4305\x00", false},
	// A Yubico device that changes is not a plug or unplug.
	{"yubikey usb_device change", "change@" + ykDev + "\x00ACTION=change\x00DEVPATH=" + ykDev + "\x00SUBSYSTEM=usb\x00" +
		"MAJOR=189\x00MINOR=6\x00DEVNAME=bus/usb/001/007\x00DEVTYPE=usb_device\x00" +
		"PRODUCT=1050/407/571\x00TYPE=0/0/0\x00BUSNUM=001\x00DEVNUM=007\x00SEQNUM=4311\x00", false},
	// Another vendor's CCID reader (HID OMNIKEY 3121): the device itself
	// says class 0 (per interface); its interface says 11 (0x0b).
	{"CCID reader device add", "add@" + omniDev + "\x00ACTION=add\x00DEVPATH=" + omniDev + "\x00SUBSYSTEM=usb\x00" +
		"MAJOR=189\x00MINOR=8\x00DEVNAME=bus/usb/001/009\x00DEVTYPE=usb_device\x00" +
		"PRODUCT=76b/3031/101\x00TYPE=0/0/0\x00BUSNUM=001\x00DEVNUM=009\x00SEQNUM=4320\x00", false},
}

var otherSmartCards = []ueventCase{
	{"CCID reader interface add", "add@" + omniIf + "\x00ACTION=add\x00DEVPATH=" + omniIf + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00PRODUCT=76b/3031/101\x00TYPE=0/0/0\x00INTERFACE=11/0/0\x00" +
		"MODALIAS=usb:v076Bp3031d0101dc00dsc00dp00ic0Bisc00ip00in00\x00SEQNUM=4321\x00", true},
	// Only the modalias says CCID (INTERFACE left out on purpose).
	{"CCID by modalias only", "remove@" + omniIf + "\x00ACTION=remove\x00DEVPATH=" + omniIf + "\x00SUBSYSTEM=usb\x00" +
		"DEVTYPE=usb_interface\x00MODALIAS=usb:v076Bp3031d0101dc00dsc00dp00ic0Bisc00ip00in00\x00SEQNUM=4330\x00", true},
}

func TestParseUEventYubiKeyPlugUnplug(t *testing.T) {
	var all []ueventCase
	all = append(all, yubikeyPlug...)
	all = append(all, yubikeyUnplug...)
	all = append(all, otherEvents...)
	all = append(all, otherSmartCards...)
	for _, c := range all {
		t.Run(c.name, func(t *testing.T) {
			e, err := ParseUEvent([]byte(c.msg))
			if err != nil {
				t.Fatalf("ParseUEvent: %v", err)
			}
			header, _, _ := strings.Cut(c.msg, "\x00")
			action, devpath, _ := strings.Cut(header, "@")
			if e.Action != action || e.DevPath != devpath {
				t.Errorf("Action, DevPath = %q, %q; want %q, %q", e.Action, e.DevPath, action, devpath)
			}
			if e.Subsystem != e.Env["SUBSYSTEM"] || e.Subsystem == "" {
				t.Errorf("Subsystem = %q, env %q", e.Subsystem, e.Env["SUBSYSTEM"])
			}
			if e.Seq == 0 || fmt.Sprint(e.Seq) != e.Env["SEQNUM"] {
				t.Errorf("Seq = %d, SEQNUM=%q", e.Seq, e.Env["SEQNUM"])
			}
			if got := e.SmartCard(); got != c.smartCard {
				t.Errorf("SmartCard() = %v, want %v (%+v)", got, c.smartCard, e)
			}
		})
	}

	// Details of one message, field by field.
	e, err := ParseUEvent([]byte(yubikeyPlug[0].msg))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"ACTION": "add", "DEVPATH": ykDev, "SUBSYSTEM": "usb", "MAJOR": "189", "MINOR": "6",
		"DEVNAME": "bus/usb/001/007", "DEVTYPE": "usb_device", "PRODUCT": "1050/407/571",
		"TYPE": "0/0/0", "BUSNUM": "001", "DEVNUM": "007", "SEQNUM": "4211",
	}
	if len(e.Env) != len(want) {
		t.Errorf("Env has %d keys, want %d: %q", len(e.Env), len(want), e.Env)
	}
	for k, v := range want {
		if e.Env[k] != v {
			t.Errorf("Env[%s] = %q, want %q", k, e.Env[k], v)
		}
	}
	if e.DevType != "usb_device" || e.Seq != 4211 {
		t.Errorf("DevType, Seq = %q, %d", e.DevType, e.Seq)
	}
	// HID_UNIQ= is an empty value, not a malformed field.
	h, err := ParseUEvent([]byte(yubikeyPlug[2].msg))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := h.Env["HID_UNIQ"]; !ok || v != "" {
		t.Errorf("HID_UNIQ = %q, %v", v, ok)
	}
}

func TestParseUEventMalformed(t *testing.T) {
	// A udev monitor message: "libudev\0", magic 0xfeedcafe (big endian),
	// header length, then offsets and the properties.
	udev := "libudev\x00\xfe\xed\xca\xfe\x28\x00\x00\x00\x28\x00\x00\x00\x40\x00\x00\x00" +
		"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" +
		"ACTION=add\x00DEVPATH=" + ykDev + "\x00SUBSYSTEM=usb\x00SEQNUM=4211\x00"
	for name, msg := range map[string]string{
		"empty":             "",
		"only NUL":          "\x00",
		"no @ in header":    "add /devices/x\x00ACTION=add\x00",
		"empty action":      "@/devices/x\x00ACTION=add\x00",
		"empty devpath":     "add@\x00ACTION=add\x00",
		"field without =":   "add@/devices/x\x00ACTION=add\x00garbage\x00SEQNUM=1\x00",
		"field without key": "add@/devices/x\x00=add\x00SEQNUM=1\x00",
		"action mismatch":   "add@/devices/x\x00ACTION=remove\x00DEVPATH=/devices/x\x00SEQNUM=1\x00",
		"devpath mismatch":  "add@/devices/x\x00ACTION=add\x00DEVPATH=/devices/y\x00SEQNUM=1\x00",
		"bad seqnum":        "add@/devices/x\x00ACTION=add\x00DEVPATH=/devices/x\x00SEQNUM=12a\x00",
		"udev monitor":      udev,
	} {
		if e, err := ParseUEvent([]byte(msg)); err == nil {
			t.Errorf("%s: ParseUEvent(%q) = %+v, want an error", name, msg, e)
		}
	}
}

// TestListenUEventsRealSocket triggers a real kernel uevent by writing to
// lo's uevent file. The kernel's synthetic uevent syntax ("change UUID
// KEY=VALUE") tags it, so other activity on the machine cannot satisfy or
// confuse the test.
func TestListenUEventsRealSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: only root may write /sys/class/net/lo/uevent to make the kernel send a uevent (CI runs as root)")
	}
	base := goroutines()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := ListenUEvents(ctx)
	if err != nil {
		t.Fatalf("ListenUEvents: %v", err)
	}
	uuid := newUUID(t)
	if err := os.WriteFile("/sys/class/net/lo/uevent", []byte("change "+uuid+" HOTPLUGTEST=1"), 0); err != nil {
		t.Fatalf("trigger uevent: %v", err)
	}
	deadline := time.After(5 * time.Second)
	for got := false; !got; {
		select {
		case e, ok := <-ch:
			if !ok {
				t.Fatal("channel closed before the event arrived")
			}
			if e.Env["SYNTH_UUID"] != uuid {
				continue
			}
			got = true
			if e.Action != "change" || e.Subsystem != "net" || e.DevPath != "/devices/virtual/net/lo" ||
				e.Env["INTERFACE"] != "lo" || e.Env["SYNTH_ARG_HOTPLUGTEST"] != "1" || e.Seq == 0 {
				t.Errorf("unexpected event %+v", e)
			}
			if e.SmartCard() {
				t.Error("lo change counted as a smart card")
			}
		case <-deadline:
			t.Fatal("no uevent within 5s of writing /sys/class/net/lo/uevent")
		}
	}
	cancel()
	expectClosed(t, ch)
	settleGoroutines(t, base)
}

func newUUID(t *testing.T) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
