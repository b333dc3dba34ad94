package vmtest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// The gpio-sim chip's lines (image/test/usr/libexec/iot-hsm-vmtest/gpio): line 0 is
// GPIO17, the status LED; line 1 is GPIO27, the first HSM's LED.
const (
	statusLED = 0
	hsmLED    = 1
)

// ledRun is one level of an LED and how long it lasted.
type ledRun struct {
	on bool
	d  time.Duration
	// whole: seen from its start to its end, not cut by the watch window.
	whole bool
}

func (r ledRun) String() string {
	s := "off"
	if r.on {
		s = "on"
	}
	if !r.whole {
		s += "~"
	}
	return fmt.Sprintf("%s %.2fs", s, r.d.Seconds())
}

// ledWindow: long enough for two whole runs of each level of a slow blink (1 s).
const ledWindow = 5 * time.Second

// ledRuns watches a gpio-sim line for ledWindow, as the kernel's simulator sees what
// the daemon drives on it: bash reads the value every 20 ms and notes each change
// with its time ($EPOCHREALTIME, no fork for the clock or the read).
func (vm *VM) ledRuns(line int) []ledRun {
	vm.t.Helper()
	out := vm.Sh(`f=$(echo /sys/devices/platform/gpio-sim.*/gpiochip*/sim_gpio` + strconv.Itoa(line) + `/value); ` +
		`end=$(( ${EPOCHREALTIME/./} + ` + strconv.Itoa(int(ledWindow/time.Microsecond)) + ` )); p=; o=; ` +
		`while t=${EPOCHREALTIME/./}; [ $t -lt $end ]; do read -r v <$f; ` +
		`[ "$v" = "$p" ] || { o="$o $t:$v"; p=$v; }; sleep 0.02; done; echo $o $t:end`)
	return parseRuns(vm.t, out)
}

// parseRuns turns "usec:level ... usec:end" into runs.
func parseRuns(t *testing.T, out string) []ledRun {
	t.Helper()
	f := strings.Fields(out)
	var runs []ledRun
	for i := 0; i+1 < len(f); i++ {
		a, v, _ := strings.Cut(f[i], ":")
		b, _, _ := strings.Cut(f[i+1], ":")
		ta, err1 := strconv.ParseInt(a, 10, 64)
		tb, err2 := strconv.ParseInt(b, 10, 64)
		if err1 != nil || err2 != nil || (v != "0" && v != "1") {
			t.Fatalf("reading the LED: %q", out)
		}
		runs = append(runs, ledRun{on: v == "1", d: time.Duration(tb-ta) * time.Microsecond,
			whole: i > 0 && i+2 < len(f)})
	}
	if len(runs) == 0 {
		t.Fatalf("reading the LED: %q", out)
	}
	return runs
}

// waitLED waits until what line shows over a window satisfies ok.
func (vm *VM) waitLED(line int, what string, ok func([]ledRun) bool, timeout time.Duration) {
	vm.t.Helper()
	var runs []ledRun
	for end := time.Now().Add(timeout); time.Now().Before(end); {
		if runs = vm.ledRuns(line); ok(runs) {
			vm.t.Logf("LED %d %s: %v", line, what, runs)
			return
		}
	}
	vm.t.Fatalf("LED %d is not %s within %v: it shows %v\n%s", line, what, timeout, runs,
		vm.Sh("journalctl -b -u iot-hsm --no-pager | tail -20"))
}

// steady: one level for the whole window.
func steady(on bool) func([]ledRun) bool {
	return func(r []ledRun) bool { return len(r) == 1 && r[0].on == on }
}

// slowBlink: on and off by turns, each about a second (a fast blink's 125 ms or a
// double blink's 150 ms flashes fail it). Generous bounds: the guest is emulated on
// a busy machine, and a late read makes one level look longer and the next shorter.
func slowBlink(r []ledRun) bool {
	var on, off int
	for _, x := range r {
		if !x.whole {
			continue
		}
		if x.d < 350*time.Millisecond || x.d > 2500*time.Millisecond {
			return false
		}
		if x.on {
			on++
		} else {
			off++
		}
	}
	return on >= 1 && off >= 1 && on+off >= 3
}

// TestLEDs: the daemon drives its status LED and its first HSM's LED on the lines of
// a GPIO chip the kernel simulates (gpio-sim), as a user would see them on a board.
// The status LED is on while all is well and blinks slowly while the broker is down;
// the HSM's LED blinks slowly until a slot is provisioned, then stays on, also while
// the broker is down; both go dark when the service stops.
func TestLEDs(t *testing.T) {
	vm := NewVM(t)
	vm.bootReady()
	// The configuration without its [leds] section (the last one): the lines stay dark.
	vm.breakUnit("leds", `ExecStartPre=+/bin/sed -i "/^.leds]/,$$d" /etc/iot-hsm/config.toml`)
	vm.waitUnit(bootTimeout, func(unit) bool { return true })
	vm.waitLED(statusLED, "on (all well)", steady(true), 2*time.Minute)
	vm.waitLED(hsmLED, "blinking slowly (token present, no slot provisioned)", slowBlink, time.Minute)

	c := newController(t, vm)
	hsms := decode[protocol.HSMListResult](t, c.call(protocol.CmdHSMList, nil, time.Minute))
	args := protocol.ProvisionArgs{HSM: hsms.HSMs[0].ID, Slot: "01", Mode: "generate", KeyType: "p256"}
	c.selfsign(c.call(protocol.CmdSlotProvision, args, 3*time.Minute))
	vm.waitLED(hsmLED, "on (its slot provisioned and connected)", steady(true), time.Minute)

	vm.Sh("systemctl stop mosquitto")
	vm.waitLED(statusLED, "blinking slowly (broker down)", slowBlink, time.Minute)
	vm.waitLED(hsmLED, "still on (its key can sign; the broker is the status LED's)", steady(true), time.Minute)
	vm.Sh("systemctl start mosquitto")
	// The daemon retries the broker at most 30 s apart.
	vm.waitLED(statusLED, "on again (broker back)", steady(true), 2*time.Minute)

	vm.Sh("systemctl stop iot-hsm")
	vm.waitLED(statusLED, "off (service stopped)", steady(false), time.Minute)
	vm.waitLED(hsmLED, "off (service stopped)", steady(false), time.Minute)
}

// TestLEDPatterns: what the guest's watch of a line reads as steady and as a slow
// blink, and what it does not (no VM needed).
func TestLEDPatterns(t *testing.T) {
	// watch makes the guest's output for levels lasting ms milliseconds each.
	watch := func(levels string, ms ...int) []ledRun {
		var sb strings.Builder
		at := int64(1_000_000)
		for i, d := range ms {
			fmt.Fprintf(&sb, "%d:%c ", at, levels[i])
			at += int64(d) * 1000
		}
		fmt.Fprintf(&sb, "%d:end", at)
		return parseRuns(t, sb.String())
	}
	cases := []struct {
		name          string
		runs          []ledRun
		on, off, slow bool
	}{
		{"steady on", watch("1", 5000), true, false, false},
		{"steady off", watch("0", 5000), false, true, false},
		{"slow blink", watch("101010", 300, 1000, 1000, 1000, 1000, 700), false, false, true},
		{"slow blink, jittery", watch("01010", 900, 1300, 700, 1100, 1000), false, false, true},
		{"slow blink, a late read", watch("01010", 500, 1600, 400, 1000, 1500), false, false, true},
		{"fast blink", watch("1010101010", 125, 125, 125, 125, 125, 125, 125, 125, 125, 3875), false, false, false},
		{"double blink", watch("0101010", 500, 150, 150, 150, 1000, 150, 2900), false, false, false},
		{"one change", watch("01", 2500, 2500), false, false, false},
	}
	for _, c := range cases {
		if got := steady(true)(c.runs); got != c.on {
			t.Errorf("%s (%v): steady on = %v", c.name, c.runs, got)
		}
		if got := steady(false)(c.runs); got != c.off {
			t.Errorf("%s (%v): steady off = %v", c.name, c.runs, got)
		}
		if got := slowBlink(c.runs); got != c.slow {
			t.Errorf("%s (%v): slow blink = %v", c.name, c.runs, got)
		}
	}
}
