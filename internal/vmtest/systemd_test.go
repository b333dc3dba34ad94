package vmtest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// Generous: TCG on a busy 2-core machine boots in 1 to 6 minutes.
const bootTimeout = 10 * time.Minute

// unit is what systemd says of iot-hsm.service.
type unit struct {
	Active, Sub, Status string
	PID, Restarts       int
}

func (vm *VM) unit() unit {
	vm.t.Helper()
	out := vm.Sh("systemctl show -p ActiveState,SubState,MainPID,NRestarts,StatusText iot-hsm")
	p := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			p[k] = v
		}
	}
	u := unit{Active: p["ActiveState"], Sub: p["SubState"], Status: p["StatusText"]}
	u.PID, _ = strconv.Atoi(p["MainPID"])
	u.Restarts, _ = strconv.Atoi(p["NRestarts"])
	return u
}

// waitUnit waits until the unit is active and running (READY=1 came: Type=notify) and
// ok accepts it.
func (vm *VM) waitUnit(timeout time.Duration, ok func(unit) bool) unit {
	vm.t.Helper()
	var u unit
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(time.Second) {
		if u = vm.unit(); u.Active == "active" && u.Sub == "running" && ok(u) {
			return u
		}
	}
	vm.t.Fatalf("iot-hsm.service not ready as expected within %v: %+v\n%s", timeout, u,
		vm.Sh("journalctl -b -u iot-hsm --no-pager | tail -40"))
	return u
}

// bootReady waits for the guest's shell and then the ready service.
func (vm *VM) bootReady() unit {
	vm.t.Helper()
	start := time.Now()
	vm.WaitShell(bootTimeout)
	u := vm.waitUnit(bootTimeout, func(unit) bool { return true })
	vm.t.Logf("booted to a ready iot-hsm.service in %v", time.Since(start).Round(time.Second))
	if out, _ := vm.Try("systemctl --failed --no-legend"); out != "" {
		vm.t.Logf("failed units:\n%s\n%s", out, vm.Sh("journalctl -b --no-pager -u iot-hsm-mark-good | tail -20"))
	}
	return u
}

// statusLine is the STATUS systemd should show for the status document st.
func statusLine(st protocol.Status) string {
	prov := 0
	for _, s := range st.Slots {
		if s.State == "provisioned" {
			prov++
		}
	}
	present := 0
	for _, h := range st.HSMs {
		if h.Present {
			present++
		}
	}
	return fmt.Sprintf("%d/%d CA slots connected; broker up; %d/%d HSMs present", st.ConnectedSlots, prov, present, len(st.HSMs))
}

// TestSystemd: the unit under real systemd in the booted image. READY, reloads by
// systemctl and by command, STATUS as the status document says, the watchdog
// restarting a hung daemon, systemd restarting a crashed one, and a reboot: each
// keeps the slots, the PIN state, the reply cache and the audit trail.
func TestSystemd(t *testing.T) {
	vm := NewVM(t)
	u := vm.bootReady()
	c := newController(t, vm)
	provID := "prov-vm"
	hsms := decode[protocol.HSMListResult](t, c.call(protocol.CmdHSMList, nil, time.Minute))
	args := protocol.ProvisionArgs{HSM: hsms.HSMs[0].ID, Slot: "01", Mode: "generate", KeyType: "p256"}
	prov := c.callID(provID, protocol.CmdSlotProvision, args, 3*time.Minute)
	c.selfsign(prov)
	st := c.status()
	if st.ConnectedSlots != 1 {
		t.Fatalf("the provisioned slot is not connected: %s", slotStates(st))
	}
	t.Run("keys on the data partition", func(t *testing.T) { checkTokensOnData(t, vm.For(t)) })
	t.Run("status", func(t *testing.T) { checkStatusLine(t, vm.For(t), c) })
	t.Run("reload", func(t *testing.T) { checkReload(t, vm.For(t), c, u) })
	kept := func(t *testing.T, what string) {
		t.Helper()
		after := c.status()
		if slotStates(after) != slotStates(st) || fmt.Sprint(after.HSMs) != fmt.Sprint(st.HSMs) {
			t.Errorf("%s: slots or PIN state changed:\n%s %v\n%s %v", what, slotStates(st), st.HSMs, slotStates(after), after.HSMs)
		}
		again := c.callID(provID, protocol.CmdSlotProvision, args, time.Minute)
		if string(again.Result) != string(prov.Result) || again.OK != prov.OK {
			t.Errorf("%s: the reply cache answered the provision again with %+v", what, again)
		}
	}
	audit := c.audit()
	t.Run("watchdog", func(t *testing.T) {
		vm := vm.For(t)
		vm.breakUnit("watchdog", "WatchdogSec=0")
		u := vm.waitUnit(bootTimeout, func(unit) bool { return true })
		vm.Sh(fmt.Sprintf("kill -STOP %d", u.PID))
		nu := vm.waitUnit(90*time.Second, func(n unit) bool { return n.PID != u.PID && n.PID != 0 })
		if j := vm.Sh("journalctl -b -u iot-hsm --no-pager"); !strings.Contains(j, "Watchdog timeout") {
			t.Errorf("restarted (%d -> %d) but not by the watchdog:\n%s", u.PID, nu.PID, j)
		}
		kept(t, "after the watchdog restart")
	})
	t.Run("crash", func(t *testing.T) {
		vm := vm.For(t)
		vm.breakUnit("crash", "Restart=no")
		u := vm.waitUnit(bootTimeout, func(unit) bool { return true })
		vm.Sh(fmt.Sprintf("kill -SEGV %d", u.PID))
		nu := vm.waitUnit(60*time.Second, func(n unit) bool { return n.PID != u.PID && n.PID != 0 })
		if nu.Restarts <= u.Restarts {
			t.Errorf("NRestarts %d -> %d", u.Restarts, nu.Restarts)
		}
		kept(t, "after the crash")
	})
	t.Run("reboot", func(t *testing.T) {
		vm := vm.For(t)
		vm.breakUnit("reboot", "ExecStartPre=+/bin/rm -rf /var/lib/iot-hsm/state")
		vm.waitUnit(bootTimeout, func(unit) bool { return true })
		boot := vm.Sh("cat /proc/sys/kernel/random/boot_id")
		vm.Reboot()
		vm.bootReady()
		if vm.Sh("cat /proc/sys/kernel/random/boot_id") == boot {
			t.Fatal("the machine did not reboot")
		}
		kept(t, "after the reboot")
	})
	sameAudit(t, audit, c.audit())
	vm.Sh("iot-hsm audit verify /var/lib/iot-hsm/state/audit.log")
}

// checkStatusLine: the STATUS of `systemctl status` says what the status command says.
func checkStatusLine(t *testing.T, vm *VM, c *controller) {
	var want string
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
		want = statusLine(c.status())
		if got := vm.unit().Status; got == want {
			t.Logf("STATUS: %s", got)
			return
		}
	}
	t.Errorf("STATUS %q, the status document says %q", vm.unit().Status, want)
}

// checkReload: `systemctl reload` re-reads the configuration in the same process (a
// changed log level shows), and so does the reload command.
func checkReload(t *testing.T, vm *VM, c *controller, u unit) {
	vm.breakUnit("reload", "ExecReload=")
	u = vm.waitUnit(bootTimeout, func(unit) bool { return true })
	vm.Sh(`sed -i 's/^state_dir/log_level = "debug"\nstate_dir/' /etc/iot-hsm/config.toml`)
	t.Cleanup(func() { vm.Try(`sed -i '/^log_level/d' /etc/iot-hsm/config.toml`) })
	before := vm.Sh("journalctl -u iot-hsm --no-pager | grep -c 'reloading the configuration' || true")
	if out, code := vm.Try("systemctl reload iot-hsm"); code != 0 {
		t.Fatalf("systemctl reload: exit %d: %s\n%s", code, out, vm.Sh("journalctl -b --no-pager -u iot-hsm | tail -30"))
	}
	vm.waitUnit(30*time.Second, func(unit) bool { return true })
	n := vm.Sh("journalctl -u iot-hsm --no-pager | grep -c 'reloading the configuration' || true")
	if n == before {
		t.Errorf("systemctl reload: the daemon did not reload (%s times before and after)", n)
	}
	r := c.call(protocol.CmdReload, nil, time.Minute)
	if !r.OK || !strings.Contains(string(r.Result), "log_level") && !strings.Contains(string(r.Result), "applied") {
		t.Errorf("the reload command: %+v %s", r, r.Result)
	}
	if m := vm.unit(); m.PID != u.PID {
		t.Errorf("a reload changed the main PID %d -> %d", u.PID, m.PID)
	}
}

// checkTokensOnData: the SoftHSM2 token holding the CA key is on the data partition,
// which an update into the other root slot keeps; SoftHSM2's own default directory
// is on the root slot and would be left behind.
func checkTokensOnData(t *testing.T, vm *VM) {
	onData := vm.Sh("find /var/lib/iot-hsm/softhsm/tokens -name '*.object' | wc -l")
	onRoot, _ := vm.Try("find /var/lib/softhsm/tokens -name '*.object' 2>/dev/null | wc -l")
	if strings.TrimSpace(onData) == "0" || strings.TrimSpace(onRoot) != "0" {
		t.Errorf("token objects: %s on the data partition, %s on the root slot (SoftHSM2 reads /etc/softhsm/softhsm2.conf)",
			strings.TrimSpace(onData), strings.TrimSpace(onRoot))
	}
}
