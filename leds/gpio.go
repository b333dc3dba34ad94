package leds

import (
	"fmt"
	"log/slog"
	"sync"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/host/v3"
)

// hostInit loads periph.io's host drivers once, and only when a GPIO LED is
// configured: on a machine without GPIO chips it finds nothing and costs nothing.
var hostInit = sync.OnceValue(func() error {
	_, err := host.Init()
	return err
})

// gpioLight is an LED on a GPIO line (periph.io names them GPIO17 and so on).
type gpioLight struct {
	name      string
	pin       gpio.PinIO
	activeLow bool
}

func openGPIO(name string, activeLow bool) (Light, error) {
	if err := hostInit(); err != nil {
		// Some drivers failing does not mean the line is missing: look it up anyway.
		slog.Debug("periph.io host drivers", "err", err)
	}
	p := gpioreg.ByName(name)
	if p == nil {
		return nil, fmt.Errorf("%w: GPIO line %s does not exist on this machine", ErrUnavailable, name)
	}
	l := &gpioLight{name: name, pin: p, activeLow: activeLow}
	// Driving the line requests it from the kernel: a line another program holds
	// fails here, at start-up, not at the first state change.
	if err := l.Set(false); err != nil {
		return nil, fmt.Errorf("%w: GPIO line %s is busy or cannot be driven: %v", ErrUnavailable, name, err)
	}
	return l, nil
}

func (l *gpioLight) Set(on bool) error {
	return l.pin.Out(gpio.Level(on != l.activeLow))
}

func (l *gpioLight) Close() error {
	err := l.Set(false)
	p := l.pin
	if r, ok := p.(gpio.RealPin); ok {
		p = r.Real()
	}
	// The character-device driver holds the line until it is closed; give it back so
	// that another program (or our own restart) can take it.
	if c, ok := p.(interface{ Close() }); ok {
		c.Close()
	}
	return err
}

func (l *gpioLight) String() string { return "gpio " + l.name }
