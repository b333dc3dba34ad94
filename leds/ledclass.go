package leds

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// classLight is a Linux LED-class device, /sys/class/leds/<name>. Blinks that the
// kernel's timer trigger can run are handed to it; the rest are driven through
// brightness.
type classLight struct {
	name     string
	dir      string
	max      string // max_brightness, written for "on"
	trigger  string // the trigger the LED had before we took it, restored on Close
	blinking bool
}

func openClass(root, name string) (Light, error) {
	dir := filepath.Join(root, name)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%w: LED %s: no such LED-class device in %s", ErrUnavailable, name, root)
	}
	l := &classLight{name: name, dir: dir, max: "1"}
	if b, err := os.ReadFile(filepath.Join(dir, "max_brightness")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
			l.max = strconv.Itoa(n)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "trigger")); err == nil {
		l.trigger = currentTrigger(string(b))
	}
	// Taking the trigger over also proves we may write to the device.
	if err := l.write("trigger", "none"); err != nil {
		return nil, fmt.Errorf("%w: LED %s cannot be driven: %v", ErrUnavailable, name, err)
	}
	if err := l.write("brightness", "0"); err != nil {
		return nil, fmt.Errorf("%w: LED %s cannot be driven: %v", ErrUnavailable, name, err)
	}
	return l, nil
}

// currentTrigger reads the trigger file's "none [mmc0] timer" form: the active one
// is in brackets.
func currentTrigger(s string) string {
	for _, f := range strings.Fields(s) {
		if strings.HasPrefix(f, "[") && strings.HasSuffix(f, "]") {
			return strings.Trim(f, "[]")
		}
	}
	return strings.TrimSpace(s)
}

// write sets one attribute. No O_CREATE: sysfs attributes exist or the write is wrong.
func (l *classLight) write(attr, value string) error {
	f, err := os.OpenFile(filepath.Join(l.dir, attr), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (l *classLight) Set(on bool) error {
	if l.blinking {
		// Leaving the timer trigger turns the LED off; brightness follows.
		if err := l.write("trigger", "none"); err != nil {
			return err
		}
		l.blinking = false
	}
	v := "0"
	if on {
		v = l.max
	}
	return l.write("brightness", v)
}

// Blink hands the blink to the kernel: trigger=timer, then its delays in ms (the
// trigger creates delay_on and delay_off when it is set).
func (l *classLight) Blink(on, off time.Duration) error {
	if err := l.write("trigger", "timer"); err != nil {
		return err
	}
	l.blinking = true
	if err := l.write("delay_on", strconv.FormatInt(on.Milliseconds(), 10)); err != nil {
		return err
	}
	return l.write("delay_off", strconv.FormatInt(off.Milliseconds(), 10))
}

// Close turns the LED off and gives it back to the trigger it had (a Raspberry Pi's
// ACT LED goes back to showing SD card activity).
func (l *classLight) Close() error {
	err := l.Set(false)
	if l.trigger != "" && l.trigger != "none" {
		if werr := l.write("trigger", l.trigger); err == nil {
			err = werr
		}
	}
	return err
}

func (l *classLight) String() string { return "led " + l.name }
