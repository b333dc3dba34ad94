package vmtest

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// The gpio-sim chip's lines (image/test/usr/libexec/iot-hsm-vmtest/gpio): line 0 is
// GPIO17, the status LED; line 1 is GPIO27, the first HSM's LED.
const (
	statusLED = 0
	hsmLED    = 1
)

// ledSamples reads what the daemon drives on a gpio-sim line, n times 200 ms apart,
// as the kernel's simulator sees it ("0" or "1" each).
func (vm *VM) ledSamples(line, n int) string {
	vm.t.Helper()
	out := vm.Sh(`v=$(echo /sys/devices/platform/gpio-sim.*/gpiochip*/sim_gpio` + strconv.Itoa(line) + `/value); s=; ` +
		`for i in $(seq ` + strconv.Itoa(n) + `); do s=$s$(cat $v); sleep 0.2; done; echo $s`)
	return strings.TrimSpace(out)
}

// waitLED waits until n samples of line satisfy ok.
func (vm *VM) waitLED(line int, what string, ok func(string) bool) {
	vm.t.Helper()
	var s string
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
		if s = vm.ledSamples(line, 12); ok(s) {
			return
		}
	}
	vm.t.Errorf("LED on line %d is not %s: samples %s", line, what, s)
}

func steady(v string) func(string) bool {
	return func(s string) bool { return strings.Trim(s, v) == "" }
}

// The LEDs' configuration, added to the test image's for this check.
const ledConfig = `
[leds.status]
driver = "gpio"
name = "GPIO17"

[[leds.hsm]]
position = 1
driver = "gpio"
name = "GPIO27"
`

// checkLEDs: the daemon drives its LEDs on the kernel's gpio-sim lines. The status LED
// is on (all well), the HSM's LED on (its slot connected); both go dark when the
// service stops.
func checkLEDs(t *testing.T, vm *VM) {
	if out, code := vm.Try("/usr/libexec/iot-hsm-vmtest/gpio"); code != 0 {
		if strings.Contains(out, "gpio-sim") && strings.Contains(out, "not found") {
			t.Skipf("this kernel has no gpio-sim module (CONFIG_GPIO_SIM): %s", out)
		}
		t.Fatalf("making the gpio-sim chip: %s", out)
	}
	vm.Sh("cat >> /etc/iot-hsm/config.toml <<'EOF'" + ledConfig + "EOF\nsystemctl restart iot-hsm")
	vm.waitUnit(bootTimeout, func(unit) bool { return true })
	vm.waitLED(statusLED, "on (all well)", steady("1"))
	vm.waitLED(hsmLED, "on (its slot connected)", steady("1"))
	vm.Sh("systemctl stop iot-hsm")
	vm.waitLED(statusLED, "off (stopped)", steady("0"))
	vm.waitLED(hsmLED, "off (stopped)", steady("0"))
}
