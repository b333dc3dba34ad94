package leds

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// fakeLED makes /sys/class/leds/<name> as the kernel shows it: brightness,
// max_brightness, trigger with the active one in brackets, and the timer trigger's
// delay files (which the kernel creates when the trigger is set).
func fakeLED(t *testing.T, root, name, trigger string) string {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for f, v := range map[string]string{"brightness": "0\n", "max_brightness": "255\n", "trigger": trigger,
		"delay_on": "500\n", "delay_off": "500\n"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func read(t *testing.T, dir, attr string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, attr))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// settle waits for the LED goroutines to act on the last change.
func settle() { time.Sleep(40 * time.Millisecond) }

func TestLEDClass(t *testing.T) {
	root := t.TempDir()
	dir := fakeLED(t, root, "act", "none [mmc0] timer heartbeat")
	c, err := Open(config.LEDs{OnError: config.LEDOnErrorFail, SysfsRoot: root,
		Status: config.LED{Driver: config.LEDDriverSysfs, Name: "act"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	settle()
	// Starting: the kernel blinks it fast.
	if tr, on, off := read(t, dir, "trigger"), read(t, dir, "delay_on"), read(t, dir, "delay_off"); tr != "timer" || on != "125" || off != "125" {
		t.Errorf("starting: trigger %q delays %s/%s, want timer 125/125", tr, on, off)
	}
	// Broker down: the kernel blinks it slowly.
	c.SetPhase(Running)
	c.Update(status("disconnected", true, true))
	settle()
	if tr, on, off := read(t, dir, "trigger"), read(t, dir, "delay_on"), read(t, dir, "delay_off"); tr != "timer" || on != "1000" || off != "1000" {
		t.Errorf("broker down: trigger %q delays %s/%s, want timer 1000/1000", tr, on, off)
	}
	// All well: trigger none, full brightness.
	c.Update(status("connected", true, true))
	settle()
	if tr, b := read(t, dir, "trigger"), read(t, dir, "brightness"); tr != "none" || b != "255" {
		t.Errorf("all well: trigger %q brightness %s, want none 255", tr, b)
	}
	// An error: double blink, which the timer trigger cannot do, so brightness is
	// driven: sample it and expect both levels, in the double blink's rhythm.
	c.SetFault("test")
	var lit, dark int
	for end := time.Now().Add(2 * (2*DoubleOn + DoubleGap + DoublePause)); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if read(t, dir, "brightness") == "255" {
			lit++
		} else {
			dark++
		}
	}
	if tr := read(t, dir, "trigger"); tr != "none" {
		t.Errorf("double blink: trigger %q, want none (driven by brightness)", tr)
	}
	// Lit 300 ms of every 1500: about a fifth of the samples.
	if share := float64(lit) / float64(lit+dark); share < 0.1 || share > 0.35 {
		t.Errorf("double blink: lit in %d of %d samples, want about 20%%", lit, lit+dark)
	}
	c.Close()
	if tr, b := read(t, dir, "trigger"), read(t, dir, "brightness"); tr != "mmc0" || b != "0" {
		t.Errorf("closed: trigger %q brightness %s, want the board's mmc0 back and dark", tr, b)
	}
}

func TestLEDClassMissing(t *testing.T) {
	root := t.TempDir()
	_, err := Open(config.LEDs{OnError: config.LEDOnErrorFail, SysfsRoot: root,
		Status: config.LED{Driver: config.LEDDriverSysfs, Name: "led7"}})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "led7") {
		t.Errorf("missing LED: %v, want ErrUnavailable naming led7", err)
	}
}

// TestSlotTransitions follows a slot LED and an HSM LED as a token comes, its slot
// gets provisioned, signs, fails, goes away and comes back.
func TestSlotTransitions(t *testing.T) {
	root := t.TempDir()
	slotDir := fakeLED(t, root, "slot1", "[none] timer")
	hsmPin := testPin(t, "TEST_LED_HSM")
	c, err := Open(config.LEDs{OnError: config.LEDOnErrorFail, SysfsRoot: root,
		HSMs:  []config.LED{{Driver: config.LEDDriverGPIO, Name: "TEST_LED_HSM", Position: 1}},
		Slots: []config.LED{{Driver: config.LEDDriverSysfs, Name: "slot1", SlotID: "tok/01"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := func(step string, hsm, slot Pattern) {
		t.Helper()
		settle()
		p := c.Patterns()
		if p["hsm:#1"] != hsm || p["slot:tok/01"] != slot {
			t.Errorf("%s: HSM LED %v, slot LED %v; want %v, %v", step, p["hsm:#1"], p["slot:tok/01"], hsm, slot)
		}
	}
	want("starting", Off, Off)
	c.SetPhase(Running)

	st := status("connected", false, false)
	st.Slots = nil
	c.Update(st)
	want("token absent", Off, Off)
	if read(t, slotDir, "brightness") != "0" {
		t.Error("token absent: slot LED lit")
	}

	st.HSMs[0].Present = true
	c.Update(st)
	want("token present, slot empty", SlowBlink, SlowBlink)
	if read(t, slotDir, "trigger") != "timer" {
		t.Error("slow blink on the LED class is not the kernel's timer")
	}

	st.Slots = []protocol.StatusSlot{{SlotID: "tok/01", State: "key_ready"}}
	c.Update(st)
	want("key ready", SlowBlink, SlowBlink)

	st.Slots[0].State = provisioned
	c.Update(st)
	want("provisioned, no PIN", DoubleBlink, DoubleBlink)

	st.HSMs[0].PIN.Set = true
	st.Slots[0].Connected = true
	c.Update(st)
	want("connected", On, On)
	if read(t, slotDir, "brightness") != "255" || hsmPin.Read() != gpio.High {
		t.Error("connected: LEDs not lit")
	}

	// A signature flashes the lit LEDs dark for a moment.
	before := time.Now()
	c.Signed("tok/01", "")
	time.Sleep(FlashDuration + 60*time.Millisecond)
	es := hsmPin.since(before)
	if len(es) != 2 || es[0].level != gpio.Low || es[1].level != gpio.High || !near(es[1].at.Sub(es[0].at), FlashDuration) {
		t.Errorf("activity flash on the HSM LED: edges %v, want dark for %v then lit", es, FlashDuration)
	}
	want("after a signature", On, On)

	c.Signed("tok/01", protocol.CodePolicyDenied)
	want("a refused request", On, On)
	c.Signed("tok/01", protocol.CodeHSMOffline)
	want("a signature failed on the token", DoubleBlink, DoubleBlink)

	st.HSMs[0].Present = false
	st.Slots[0].Connected = false
	c.Update(st)
	want("token pulled", Off, Off)

	st.HSMs[0].Present = true
	st.Slots[0].Connected = true
	c.Update(st)
	want("token back: the failure is forgotten", On, On)

	c.Signed("tok/01", protocol.CodePINIncorrect)
	want("PIN refused while signing", DoubleBlink, DoubleBlink)
	c.Signed("tok/01", "")
	want("signed again", On, On)

	c.SetPhase(Stopping)
	want("stopping", Off, Off)
}
