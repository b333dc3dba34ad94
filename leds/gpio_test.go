package leds

import (
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/gpio/gpiotest"

	"github.com/iot-hsm/iot-hsm/config"
)

// recPin is one of periph.io's test pins that remembers when its level changed.
type recPin struct {
	*gpiotest.Pin
	mu    sync.Mutex
	edges []edge
	busy  bool // Out fails as a line held by another program does
}

type edge struct {
	at    time.Time
	level gpio.Level
}

func (p *recPin) Out(l gpio.Level) error {
	if p.busy {
		return syscall.EBUSY
	}
	prev := p.Read()
	if err := p.Pin.Out(l); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.edges) == 0 || prev != l {
		p.edges = append(p.edges, edge{time.Now(), l})
	}
	return nil
}

func (p *recPin) since(t time.Time) []edge {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []edge
	for _, e := range p.edges {
		if !e.at.Before(t) {
			out = append(out, e)
		}
	}
	return out
}

// testPin registers a test pin under a name no real GPIO chip uses.
func testPin(t *testing.T, name string) *recPin {
	t.Helper()
	p := &recPin{Pin: &gpiotest.Pin{N: name, Num: -1}}
	if err := gpioreg.Register(p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gpioreg.Unregister(name) })
	return p
}

func gpioLED(name string) config.LED { return config.LED{Driver: config.LEDDriverGPIO, Name: name} }

// durations returns how long each level lasted between the recorded edges.
func durations(es []edge) (on, off []time.Duration) {
	for i := 1; i < len(es); i++ {
		d := es[i].at.Sub(es[i-1].at)
		if es[i-1].level == gpio.High {
			on = append(on, d)
		} else {
			off = append(off, d)
		}
	}
	return on, off
}

const tolerance = 60 * time.Millisecond

func near(d, want time.Duration) bool { return d > want-tolerance && d < want+tolerance }

// checkTiming checks levels held for want: on average within 20 ms, and each one
// within tolerance but for one in five (a loaded CI machine delays a wake-up now and
// then; a wrong timing is wrong every time).
func checkTiming(t *testing.T, what string, ds []time.Duration, want time.Duration) {
	t.Helper()
	if len(ds) == 0 {
		t.Errorf("%s: nothing measured", what)
		return
	}
	var sum time.Duration
	off := 0
	for _, d := range ds {
		sum += d
		if !near(d, want) {
			off++
		}
	}
	if mean := sum / time.Duration(len(ds)); mean < want-20*time.Millisecond || mean > want+20*time.Millisecond {
		t.Errorf("%s: held %v on average, want %v (%v)", what, mean, want, ds)
	}
	if off*5 > len(ds) {
		t.Errorf("%s: %d of %d levels off %v by more than %v: %v", what, off, len(ds), want, tolerance, ds)
	}
}

func TestGPIOBlinkTiming(t *testing.T) {
	pin := testPin(t, "TEST_LED_TIMING")
	c, err := Open(config.LEDs{OnError: config.LEDOnErrorFail, Status: gpioLED("TEST_LED_TIMING")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Starting: fast blink.
	start := time.Now()
	time.Sleep(8*(FastOn+FastOff) + 50*time.Millisecond)
	on, off := durations(pin.since(start))
	if len(on) < 5 || len(off) < 5 {
		t.Fatalf("fast blink: %d on and %d off periods in %v", len(on), len(off), time.Since(start))
	}
	checkTiming(t, "fast blink on", on[1:], FastOn)
	checkTiming(t, "fast blink off", off[1:], FastOff)

	// Broker down: slow blink.
	c.SetPhase(Running)
	c.Update(status("disconnected", true, true))
	start = time.Now()
	time.Sleep(2*(SlowOn+SlowOff) + 100*time.Millisecond)
	on, off = durations(pin.since(start))
	if len(on) < 1 || len(off) < 1 {
		t.Fatalf("slow blink: %d on and %d off periods", len(on), len(off))
	}
	checkTiming(t, "slow blink", append(on, off...)[1:], SlowOn)

	// An error: double blink, on-gap-on-pause.
	c.SetFault("test fault")
	start = time.Now()
	time.Sleep(3*(2*DoubleOn+DoubleGap+DoublePause) + 100*time.Millisecond)
	es := pin.since(start)
	// The first edge is the switch to the pattern, not a full level: measured from
	// the second.
	onsD, offs := durations(es[1:])
	var pauseDs, gapDs []time.Duration
	for _, d := range offs {
		if d > (DoubleGap+DoublePause)/2 {
			pauseDs = append(pauseDs, d)
		} else {
			gapDs = append(gapDs, d)
		}
	}
	if len(pauseDs) < 2 || len(gapDs) < 2 || len(onsD) < 4 {
		t.Errorf("double blink: %d pauses, %d gaps, %d flashes in %d edges", len(pauseDs), len(gapDs), len(onsD), len(es))
	}
	checkTiming(t, "double blink pause", pauseDs, DoublePause)
	checkTiming(t, "double blink gap", gapDs, DoubleGap)
	checkTiming(t, "double blink flash", onsD, DoubleOn)

	// All well: steadily on.
	c.SetFault("")
	c.Update(status("connected", true, true))
	time.Sleep(50 * time.Millisecond)
	start = time.Now()
	time.Sleep(300 * time.Millisecond)
	if es := pin.since(start); len(es) != 0 || pin.Read() != gpio.High {
		t.Errorf("all well: level %v with %d edges, want steadily high", pin.Read(), len(es))
	}

	c.Close()
	if pin.Read() != gpio.Low {
		t.Error("closed: the LED is still lit")
	}
}

func TestGPIOActiveLow(t *testing.T) {
	pin := testPin(t, "TEST_LED_ACTIVE_LOW")
	led := gpioLED("TEST_LED_ACTIVE_LOW")
	led.ActiveLow = true
	c, err := Open(config.LEDs{OnError: config.LEDOnErrorFail, Status: led})
	if err != nil {
		t.Fatal(err)
	}
	c.SetPhase(Running)
	c.Update(status("connected", true, true))
	time.Sleep(50 * time.Millisecond)
	if pin.Read() != gpio.Low {
		t.Error("active low, lit: the line is high")
	}
	c.Close()
	if pin.Read() != gpio.High {
		t.Error("active low, closed: the line is low (lit)")
	}
}

func TestGPIOMissingOrBusyLine(t *testing.T) {
	busy := testPin(t, "TEST_LED_BUSY")
	busy.busy = true
	for name, cfg := range map[string]config.LEDs{
		"TEST_LED_MISSING": {OnError: config.LEDOnErrorFail, Status: gpioLED("TEST_LED_MISSING")},
		"TEST_LED_BUSY":    {OnError: config.LEDOnErrorFail, Slots: []config.LED{{Driver: "gpio", Name: "TEST_LED_BUSY", SlotID: "a/1"}}},
	} {
		_, err := Open(cfg)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want ErrUnavailable naming the line", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
	ok := testPin(t, "TEST_LED_OK")
	// With warn, the missing line is dark and the others work.
	c, err := Open(config.LEDs{OnError: config.LEDOnErrorWarn, Status: gpioLED("TEST_LED_OK"),
		HSMs: []config.LED{{Driver: "gpio", Name: "TEST_LED_MISSING", Position: 1}}})
	if err != nil {
		t.Fatalf("on_error warn: %v", err)
	}
	defer c.Close()
	if p := c.Patterns(); len(p) != 1 || p["status"] != FastBlink {
		t.Errorf("on_error warn: patterns %v, want only the status LED, fast blinking", p)
	}
	time.Sleep(3 * FastOn)
	if len(ok.since(time.Time{})) < 2 {
		t.Error("on_error warn: the working LED does not blink")
	}
}
