package config

import (
	"fmt"
	"strings"
)

// LEDs assigns the appliance's LEDs: one status LED, and LEDs for HSMs or for single
// slots. Each names its driver, so a board can mix GPIO lines and LED-class devices
// (a Raspberry Pi's ACT LED is led0 in /sys/class/leds).
//
//	[leds]
//	on_error = "fail"                 # fail | warn
//	[leds.status]
//	driver = "gpio"                   # gpio | sysfs | none
//	name = "GPIO17"
//	active_low = false
//	[[leds.hsm]]
//	hsm = "yubikey-12345678"          # or position = 1: the first HSM by id
//	driver = "sysfs"
//	name = "led1"
//	[[leds.slot]]
//	slot_id = "pkcs11-abc/01"
//	driver = "gpio"
//	name = "GPIO27"
type LEDs struct {
	// OnError decides what a missing or busy LED does: "fail" refuses to start (or
	// to reload) with an error naming the line, "warn" logs it and leaves that LED
	// dark (the none driver).
	OnError string `toml:"on_error"`
	// SysfsRoot is where LED-class devices live; tests point it at a fake tree.
	SysfsRoot string `toml:"sysfs_root"`
	Status    LED    `toml:"status"`
	HSMs      []LED  `toml:"hsm"`
	Slots     []LED  `toml:"slot"`
}

// LED is one LED and what it shows.
type LED struct {
	// Driver is gpio (a GPIO line through periph.io), sysfs (a Linux LED-class
	// device) or none.
	Driver string `toml:"driver"`
	// Name is the GPIO line name (GPIO17) or the LED-class device name (led0).
	Name string `toml:"name"`
	// ActiveLow: the LED lights when the line is low (gpio only; the LED class
	// already knows its polarity).
	ActiveLow bool `toml:"active_low"`
	// HSM ([[leds.hsm]]) is the HSM id shown, or Position the n-th HSM by id from 1,
	// for images that do not know the serial of the key that will be plugged in.
	HSM      string `toml:"hsm"`
	Position int    `toml:"position"`
	// SlotID ([[leds.slot]]) is the slot shown.
	SlotID string `toml:"slot_id"`
}

// LED drivers and what to do about a missing LED.
const (
	LEDDriverGPIO  = "gpio"
	LEDDriverSysfs = "sysfs"
	LEDDriverNone  = "none"

	LEDOnErrorFail = "fail"
	LEDOnErrorWarn = "warn"

	DefaultLEDSysfsRoot = "/sys/class/leds"
)

func (l *LEDs) applyDefaults() {
	if l.OnError == "" {
		l.OnError = LEDOnErrorFail
	}
	if l.SysfsRoot == "" {
		l.SysfsRoot = DefaultLEDSysfsRoot
	}
	for _, led := range l.all() {
		if led.Driver == "" && led.Name == "" {
			led.Driver = LEDDriverNone
		}
	}
}

// all returns pointers to every LED, so defaults and checks see them in one place.
func (l *LEDs) all() []*LED {
	out := []*LED{&l.Status}
	for i := range l.HSMs {
		out = append(out, &l.HSMs[i])
	}
	for i := range l.Slots {
		out = append(out, &l.Slots[i])
	}
	return out
}

func (l *LEDs) check() error {
	switch l.OnError {
	case LEDOnErrorFail, LEDOnErrorWarn:
	default:
		return fmt.Errorf("%w: leds.on_error %q (want fail or warn)", ErrInvalid, l.OnError)
	}
	if err := l.Status.check("leds.status"); err != nil {
		return err
	}
	if l.Status.HSM != "" || l.Status.Position != 0 || l.Status.SlotID != "" {
		return fmt.Errorf("%w: leds.status shows the whole appliance: hsm, position and slot_id belong to [[leds.hsm]] and [[leds.slot]]", ErrInvalid)
	}
	for i, led := range l.HSMs {
		field := fmt.Sprintf("leds.hsm[%d]", i)
		if err := led.check(field); err != nil {
			return err
		}
		switch {
		case led.SlotID != "":
			return fmt.Errorf("%w: %s: slot_id belongs to [[leds.slot]]", ErrInvalid, field)
		case (led.HSM == "") == (led.Position == 0):
			return fmt.Errorf("%w: %s: set hsm or position, one of them", ErrInvalid, field)
		case led.Position < 0:
			return fmt.Errorf("%w: %s: position %d (want 1 or more)", ErrInvalid, field, led.Position)
		}
	}
	for i, led := range l.Slots {
		field := fmt.Sprintf("leds.slot[%d]", i)
		if err := led.check(field); err != nil {
			return err
		}
		switch {
		case led.HSM != "" || led.Position != 0:
			return fmt.Errorf("%w: %s: hsm and position belong to [[leds.hsm]]", ErrInvalid, field)
		case !strings.Contains(led.SlotID, "/"):
			return fmt.Errorf("%w: %s: slot_id %q (want <hsm-id>/<slot>)", ErrInvalid, field, led.SlotID)
		}
	}
	// One line driven by two LEDs would show neither state.
	seen := map[string]bool{}
	for _, led := range l.all() {
		if led.Driver == LEDDriverNone {
			continue
		}
		key := led.Driver + ":" + led.Name
		if seen[key] {
			return fmt.Errorf("%w: leds: %s %q is assigned twice", ErrInvalid, led.Driver, led.Name)
		}
		seen[key] = true
	}
	return nil
}

func (led LED) check(field string) error {
	switch led.Driver {
	case LEDDriverNone:
		return nil
	case LEDDriverGPIO:
	case LEDDriverSysfs:
		if led.ActiveLow {
			return fmt.Errorf("%w: %s: active_low applies to gpio only (the LED class knows its polarity)", ErrInvalid, field)
		}
		if strings.ContainsAny(led.Name, "/\x00") || led.Name == "." || led.Name == ".." {
			return fmt.Errorf("%w: %s: name %q is not an LED-class device name", ErrInvalid, field, led.Name)
		}
	case "":
		return fmt.Errorf("%w: %s: driver is required (gpio, sysfs or none)", ErrInvalid, field)
	default:
		return fmt.Errorf("%w: %s: driver %q (want gpio, sysfs or none)", ErrInvalid, field, led.Driver)
	}
	if led.Name == "" {
		return fmt.Errorf("%w: %s: name is required for driver %s", ErrInvalid, field, led.Driver)
	}
	return nil
}
