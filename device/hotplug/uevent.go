// Package hotplug tells the device when to rescan its HSMs: it listens to
// kernel uevents for USB smart-card devices (YubiKeys and CCID readers) and
// to pcscd for readers and cards coming and going, and merges both into
// debounced OnChange calls, with a slow periodic rescan as a safety net.
package hotplug

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// UEvent is one kernel uevent.
type UEvent struct {
	Action    string // add, remove, bind, unbind, change, ...
	DevPath   string // /devices/..., relative to /sys
	Subsystem string
	DevType   string
	Env       map[string]string // every KEY=VALUE of the message
	Seq       uint64            // SEQNUM
}

// ActionOverflow is the Action of a UEvent that ListenUEvents makes up when
// the kernel dropped events because the socket buffer was full. It is not a
// kernel action: it tells the consumer to rescan.
const ActionOverflow = "overflow"

const yubicoVendor = 0x1050

// classCCID is the USB class of smart-card (CCID) interfaces.
const classCCID = 0x0b

// udevMagic starts the messages udevd multicasts on the same netlink
// protocol (group 2); the listener joins only the kernel group, so one of
// these arriving is a mistake worth rejecting rather than misparsing.
var udevMagic = []byte("libudev\x00")

// ParseUEvent parses a kernel uevent as the kernel multicasts it:
// "ACTION@DEVPATH\0KEY=VALUE\0KEY=VALUE\0...". It rejects udev monitor
// messages and anything that does not have this shape.
func ParseUEvent(b []byte) (UEvent, error) {
	if bytes.HasPrefix(b, udevMagic) {
		return UEvent{}, errors.New("uevent: udev monitor message, not a kernel uevent")
	}
	fields := bytes.Split(b, []byte{0})
	header := string(fields[0])
	action, devpath, ok := strings.Cut(header, "@")
	if !ok || action == "" || devpath == "" {
		return UEvent{}, fmt.Errorf("uevent: bad header %q", truncate(header))
	}
	e := UEvent{Action: action, DevPath: devpath, Env: make(map[string]string, len(fields))}
	for _, f := range fields[1:] {
		if len(f) == 0 {
			continue // the trailing NUL, or padding
		}
		k, v, ok := bytes.Cut(f, []byte{'='})
		if !ok || len(k) == 0 {
			return UEvent{}, fmt.Errorf("uevent: bad field %q", truncate(string(f)))
		}
		e.Env[string(k)] = string(v)
	}
	// The kernel repeats the header in ACTION and DEVPATH; disagreement
	// means the message is not what we think it is.
	if a, ok := e.Env["ACTION"]; ok && a != e.Action {
		return UEvent{}, fmt.Errorf("uevent: header action %q but ACTION=%q", e.Action, a)
	}
	if p, ok := e.Env["DEVPATH"]; ok && p != e.DevPath {
		return UEvent{}, fmt.Errorf("uevent: header path %q but DEVPATH=%q", truncate(e.DevPath), truncate(p))
	}
	e.Subsystem = e.Env["SUBSYSTEM"]
	e.DevType = e.Env["DEVTYPE"]
	if s, ok := e.Env["SEQNUM"]; ok {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return UEvent{}, fmt.Errorf("uevent: bad SEQNUM %q", truncate(s))
		}
		e.Seq = n
	}
	return e, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// SmartCard reports whether e is a USB device or interface appearing or
// going (add, remove, bind, unbind) that is a YubiKey (vendor 0x1050) or a
// smart-card reader (an interface, or rarely a whole device, of class 0x0b).
// Child devices (hid, hidraw, input) are not counted: their parent USB
// device already produces an event.
func (e UEvent) SmartCard() bool {
	if e.Subsystem != "usb" {
		return false
	}
	switch e.Action {
	case "add", "remove", "bind", "unbind":
	default:
		return false
	}
	// PRODUCT=vendor/product/bcdDevice in hex without leading zeros.
	if v, _, ok := strings.Cut(e.Env["PRODUCT"], "/"); ok {
		if n, err := strconv.ParseUint(v, 16, 16); err == nil && n == yubicoVendor {
			return true
		}
	}
	// INTERFACE=class/subclass/protocol and TYPE=class/subclass/protocol,
	// both in decimal.
	for _, key := range []string{"INTERFACE", "TYPE"} {
		if c, _, ok := strings.Cut(e.Env[key], "/"); ok {
			if n, err := strconv.ParseUint(c, 10, 8); err == nil && n == classCCID {
				return true
			}
		}
	}
	if vendor, class, ok := parseUSBModalias(e.Env["MODALIAS"]); ok {
		return vendor == yubicoVendor || class == classCCID
	}
	return false
}

// parseUSBModalias reads the vendor and interface class out of an
// interface's modalias,
// "usb:vVVVVpPPPPdDDDDdcDDdscDDdpDDicIIiscIIipIIinII" (hex). ok is false
// when it is not one.
func parseUSBModalias(m string) (vendor uint16, class uint8, ok bool) {
	rest, found := strings.CutPrefix(m, "usb:v")
	if !found || len(rest) < 4 {
		return 0, 0, false
	}
	v, err := strconv.ParseUint(rest[:4], 16, 16)
	if err != nil {
		return 0, 0, false
	}
	// "ic" cannot occur earlier: the fields before it are upper-case hex
	// digits and the letters v, p, d, c, s.
	i := strings.Index(rest, "ic")
	if i < 0 || len(rest) < i+4 {
		return 0, 0, false
	}
	c, err := strconv.ParseUint(rest[i+2:i+4], 16, 8)
	if err != nil {
		return 0, 0, false
	}
	return uint16(v), uint8(c), true
}
