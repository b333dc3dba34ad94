package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestServiceAndLEDs(t *testing.T) {
	c, err := Parse([]byte(`
[service]
broker_wait = "3s"
stop_timeout = "5s"
hung_grace = "1m"

[leds]
on_error = "warn"
[leds.status]
driver = "gpio"
name = "GPIO17"
active_low = true
[[leds.hsm]]
position = 1
driver = "sysfs"
name = "led1"
[[leds.hsm]]
hsm = "yubikey-12345678"
driver = "none"
[[leds.slot]]
slot_id = "pkcs11-abc/01"
driver = "gpio"
name = "GPIO27"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Service.BrokerWait != 3*time.Second || c.Service.StopTimeout != 5*time.Second || c.Service.HungGrace != time.Minute {
		t.Errorf("service %+v", c.Service)
	}
	l := c.LEDs
	if l.OnError != "warn" || l.SysfsRoot != DefaultLEDSysfsRoot || l.Status.Name != "GPIO17" || !l.Status.ActiveLow ||
		len(l.HSMs) != 2 || l.HSMs[0].Position != 1 || len(l.Slots) != 1 || l.Slots[0].SlotID != "pkcs11-abc/01" {
		t.Errorf("leds %+v", l)
	}
}

func TestServiceAndLEDDefaults(t *testing.T) {
	c := Default()
	if c.Service.BrokerWait != DefaultBrokerWait || c.Service.StopTimeout != DefaultStopTimeout || c.Service.HungGrace != DefaultHungGrace {
		t.Errorf("service defaults %+v", c.Service)
	}
	if c.LEDs.OnError != LEDOnErrorFail || c.LEDs.Status.Driver != LEDDriverNone || c.LEDs.SysfsRoot != DefaultLEDSysfsRoot {
		t.Errorf("led defaults %+v", c.LEDs)
	}
}

func TestServiceAndLEDRejects(t *testing.T) {
	for name, tc := range map[string]struct{ text, want string }{
		"stop timeout zero":   {"[service]\nstop_timeout = \"1ns\"", "service.stop_timeout"},
		"duration not parsed": {"[service]\nhung_grace = \"soon\"", "soon"},
		"broker wait huge":    {"[service]\nbroker_wait = \"1h\"", "service.broker_wait"},
		"unknown service key": {"[service]\nwatchdog = \"1s\"", "service.watchdog"},
		"on_error":            {"[leds]\non_error = \"ignore\"", "leds.on_error"},
		"no driver":           {"[leds.status]\nname = \"GPIO17\"", "driver is required"},
		"bad driver":          {"[leds.status]\ndriver = \"pwm\"\nname = \"x\"", "driver \"pwm\""},
		"no name":             {"[leds.status]\ndriver = \"gpio\"", "name is required"},
		"sysfs active low":    {"[leds.status]\ndriver = \"sysfs\"\nname = \"led0\"\nactive_low = true", "active_low"},
		"sysfs path":          {"[leds.status]\ndriver = \"sysfs\"\nname = \"../x\"", "not an LED-class"},
		"status with slot":    {"[leds.status]\ndriver = \"none\"\nslot_id = \"a/b\"", "leds.status"},
		"hsm neither":         {"[[leds.hsm]]\ndriver = \"gpio\"\nname = \"GPIO5\"", "set hsm or position"},
		"hsm both":            {"[[leds.hsm]]\nhsm = \"x\"\nposition = 1\ndriver = \"none\"", "set hsm or position"},
		"hsm negative":        {"[[leds.hsm]]\nposition = -1\ndriver = \"none\"", "position -1"},
		"hsm with slot":       {"[[leds.hsm]]\nhsm = \"x\"\nslot_id = \"x/1\"\ndriver = \"none\"", "slot_id belongs"},
		"slot without slash":  {"[[leds.slot]]\nslot_id = \"x\"\ndriver = \"none\"", "slot_id \"x\""},
		"slot with hsm":       {"[[leds.slot]]\nslot_id = \"x/1\"\nhsm = \"x\"\ndriver = \"none\"", "belong to [[leds.hsm]]"},
		"line twice": {"[leds.status]\ndriver = \"gpio\"\nname = \"GPIO17\"\n[[leds.slot]]\nslot_id = \"x/1\"\ndriver = \"gpio\"\nname = \"GPIO17\"",
			"assigned twice"},
	} {
		_, err := Parse([]byte(tc.text))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrInvalid mentioning %q", name, err, tc.want)
		}
	}
}
