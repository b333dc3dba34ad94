package leds

import (
	"errors"
	"fmt"
	"time"

	"github.com/iot-hsm/iot-hsm/config"
)

// ErrUnavailable is an LED that cannot be driven: a GPIO line that does not exist or
// is held by another program, an LED-class device that is missing or not writable.
// The message names the line.
var ErrUnavailable = errors.New("LED not available")

// Light is one physical LED.
type Light interface {
	Set(on bool) error
	// Close turns the LED off and releases it.
	Close() error
}

// blinker is a Light that blinks by itself, without a goroutine waking the CPU for
// every edge (the LED class's timer trigger).
type blinker interface {
	Blink(on, off time.Duration) error
}

// openLight opens the LED a configuration entry names. A none LED is nil.
func openLight(sysfsRoot string, led config.LED) (Light, error) {
	switch led.Driver {
	case config.LEDDriverGPIO:
		return openGPIO(led.Name, led.ActiveLow)
	case config.LEDDriverSysfs:
		return openClass(sysfsRoot, led.Name)
	case config.LEDDriverNone, "":
		return nil, nil
	}
	return nil, fmt.Errorf("%w: unknown driver %q", ErrUnavailable, led.Driver)
}
