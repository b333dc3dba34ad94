package daemontest

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iot-hsm/iot-hsm/protocol"
)

func monotonicUsec() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano() / 1e3
}

// checkReloading checks a RELOADING=1 message: MONOTONIC_USEC is CLOCK_MONOTONIC
// when it was sent.
func checkReloading(t *testing.T, m notifyMsg) {
	t.Helper()
	v, err := strconv.ParseInt(m.fields["MONOTONIC_USEC"], 10, 64)
	if err != nil {
		t.Fatalf("RELOADING=1 without a usable MONOTONIC_USEC: %q", m.raw)
	}
	now := monotonicUsec()
	if v > now || now-v > 10e6 {
		t.Errorf("MONOTONIC_USEC=%d, the test's CLOCK_MONOTONIC is %d", v, now)
	}
}

// TestSystemdLifecycle runs the daemon as systemd would and follows it from READY to
// STOPPING: STATUS, the watchdog's cadence, reloads by SIGHUP and by command, a bad
// configuration kept out, and the offline status on the way out.
func TestSystemdLifecycle(t *testing.T) {
	const watchdog = time.Second
	d := startDaemon(t, daemonOpts{systemd: true, watchdog: watchdog})
	n := d.notify

	ready, at := n.waitKV(t, 0, 60*time.Second, "READY=1")
	status := ready.fields["STATUS"]
	for _, want := range []string{"no CA slot provisioned yet", "broker up", "1/1 HSMs present"} {
		if !strings.Contains(status, want) {
			t.Errorf("STATUS with READY=1 is %q, want it to say %q", status, want)
		}
	}
	for _, m := range n.all()[:at] {
		if m.has("WATCHDOG=1") {
			t.Error("a watchdog ping before READY=1")
		}
	}

	// The watchdog: a ping every WATCHDOG_USEC/2.
	start := time.Now()
	time.Sleep(3 * watchdog)
	pings := n.pings(start, time.Now())
	if len(pings) < 4 {
		t.Fatalf("%d watchdog pings in %v with WATCHDOG_USEC=%v", len(pings), 3*watchdog, watchdog)
	}
	// Each gap about WATCHDOG_USEC/2 (loose: a busy CI machine delays a wake-up now
	// and then), and on average close to it.
	for i := 1; i < len(pings); i++ {
		if gap := pings[i].Sub(pings[i-1]); gap < watchdog/2-200*time.Millisecond || gap > watchdog/2+400*time.Millisecond {
			t.Errorf("watchdog ping %d came %v after the one before, want about %v", i, gap, watchdog/2)
		}
	}
	if mean := pings[len(pings)-1].Sub(pings[0]) / time.Duration(len(pings)-1); mean < watchdog/2-100*time.Millisecond || mean > watchdog/2+100*time.Millisecond {
		t.Errorf("watchdog pings every %v on average, want %v", mean, watchdog/2)
	}

	op := newOperator(t, d)
	st := decode[protocol.Status](t, op.call(protocol.CmdStatus, nil))
	if st.Device != d.deviceID || len(st.HSMs) != 1 {
		t.Fatalf("status %+v", st)
	}

	// SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1.
	mark := n.mark()
	d.signal(syscall.SIGHUP)
	rel, i := n.waitKV(t, mark, 10*time.Second, "RELOADING=1")
	checkReloading(t, rel)
	n.waitKV(t, i+1, 10*time.Second, "READY=1")

	// The reload command, with a changed log level: applied, and the same dance.
	d.writeConfig(strings.Replace(fmt.Sprintf(baseConfig, d.deviceID), `log_level = "info"`, `log_level = "debug"`, 1))
	mark = n.mark()
	res := decode[struct {
		Applied         []string `json:"applied"`
		RestartRequired []string `json:"restart_required"`
		HSMs            int      `json:"hsms"`
	}](t, op.call(protocol.CmdReload, nil))
	if !contains(res.Applied, "log_level") || res.HSMs != 1 || len(res.RestartRequired) != 0 {
		t.Errorf("reload result %+v, want log_level applied, 1 HSM, nothing waiting for a restart", res)
	}
	rel, i = n.waitKV(t, mark, 10*time.Second, "RELOADING=1")
	checkReloading(t, rel)
	n.waitKV(t, i+1, 10*time.Second, "READY=1")

	// A setting that needs a restart is reported, not applied.
	d.writeConfig(strings.Replace(fmt.Sprintf(baseConfig, d.deviceID), `log_level = "info"`, "log_level = \"debug\"\nqueue_size = 4", 1))
	res = decode[struct {
		Applied         []string `json:"applied"`
		RestartRequired []string `json:"restart_required"`
		HSMs            int      `json:"hsms"`
	}](t, op.call(protocol.CmdReload, nil))
	if !contains(res.RestartRequired, "queue_size") {
		t.Errorf("reload result %+v, want queue_size waiting for a restart", res)
	}
	if s := n.lastStatus(); !strings.Contains(s, "restart required for: queue_size") {
		t.Errorf("STATUS %q does not say queue_size waits for a restart", s)
	}

	// A configuration that does not parse: rejected by SIGHUP and by the command, the
	// running one kept, and systemd still hears READY=1 after RELOADING=1.
	d.writeConfig("device_id = \n")
	mark = n.mark()
	d.signal(syscall.SIGHUP)
	_, i = n.waitKV(t, mark, 10*time.Second, "RELOADING=1")
	ready, _ = n.waitKV(t, i+1, 10*time.Second, "READY=1")
	if s := ready.fields["STATUS"]; !strings.Contains(s, "reload rejected, running configuration kept") {
		t.Errorf("STATUS after a rejected reload: %q", s)
	}
	r := op.call(protocol.CmdReload, nil)
	if r.OK || r.Error == nil || r.Error.Code != protocol.CodeBadRequest || !strings.Contains(r.Error.Message, "toml") {
		t.Errorf("reload of a broken configuration: ok=%v error=%+v, want bad_request with the parse error", r.OK, r.Error)
	}
	if !strings.Contains(d.log.String(), "configuration rejected; the running one is kept") {
		t.Error("the rejected configuration is not in the log")
	}
	st = decode[protocol.Status](t, op.call(protocol.CmdStatus, nil))
	if st.Device != d.deviceID || len(st.HSMs) != 1 || !st.HSMs[0].Present || !st.HSMs[0].PIN.Set {
		t.Errorf("after a rejected reload: status %+v, want the running configuration", st)
	}

	// SIGTERM: STOPPING=1, the offline status published, a clean exit.
	mark = n.mark()
	d.signal(syscall.SIGTERM)
	n.waitKV(t, mark, 10*time.Second, "STOPPING=1")
	if code := d.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if last, ok := op.lastStatus(); !ok || last.Online {
		t.Errorf("last status document %+v, want online false", last)
	}
	for _, m := range n.all()[mark:] {
		if m.has("READY=1") {
			t.Errorf("READY=1 after STOPPING=1: %q", m.raw)
		}
	}
}

// TestWedgedWorkerStopsWatchdog wedges a token worker (a test build only) and checks
// that the pings stop once the request overran its deadline plus hung_grace, that
// STATUS says why, and that SIGTERM still ends the daemon within stop_timeout,
// answering the stuck request.
func TestWedgedWorkerStopsWatchdog(t *testing.T) {
	const watchdog = time.Second
	d := startDaemon(t, daemonOpts{systemd: true, watchdog: watchdog, wedge: protocol.CmdHSMSetPIN + ":1s"})
	n := d.notify
	n.waitKV(t, 0, 60*time.Second, "READY=1")
	op := newOperator(t, d)
	st := decode[protocol.Status](t, op.call(protocol.CmdStatus, nil))
	if len(st.HSMs) != 1 {
		t.Fatalf("status %+v", st)
	}
	hsmID := st.HSMs[0].ID

	wedgedAt := time.Now()
	stuck := op.send(protocol.CmdHSMSetPIN, protocol.HSMSetPINArgs{HSM: hsmID, PIN: "1234"})
	// Deadline 1s + hung_grace 1s: pings stop about 2 s after the request reached its
	// worker (the margin below is for the trip through the broker). Before that they
	// go on: the request is slow, not yet wedged.
	time.Sleep(6 * time.Second)
	if before := n.pings(wedgedAt, wedgedAt.Add(1500*time.Millisecond)); len(before) < 2 {
		t.Errorf("%d pings while the request was within its deadline, want them to go on", len(before))
	}
	if after := n.pings(wedgedAt.Add(3*time.Second), time.Now()); len(after) != 0 {
		t.Errorf("%d watchdog pings after the worker wedged (last at +%v), want none", len(after), after[len(after)-1].Sub(wedgedAt))
	}
	if s := n.lastStatus(); !strings.Contains(s, "watchdog pings stopped") || !strings.Contains(s, hsmID) {
		t.Errorf("STATUS %q does not name the wedged worker", s)
	}
	// The control worker still answers: only the token is stuck.
	if r := op.call(protocol.CmdStatus, nil); !r.OK {
		t.Errorf("status while a token worker is wedged: %+v", r.Error)
	}

	mark := n.mark()
	stopAt := time.Now()
	d.signal(syscall.SIGTERM)
	n.waitKV(t, mark, 10*time.Second, "STOPPING=1")
	d.wait(15 * time.Second)
	if took := time.Since(stopAt); took > 3*time.Second+3*time.Second {
		t.Errorf("stopping took %v with stop_timeout 3s", took)
	}
	r := op.reply(stuck, 5*time.Second)
	if r.OK || r.Error == nil || r.Error.Code != protocol.CodeHSMOffline {
		t.Errorf("the wedged request: ok=%v error=%+v, want hsm_offline at shutdown", r.OK, r.Error)
	}
}

// TestReadyWithBrokerDown: a broker that does not answer does not hold the service
// in "activating". READY=1 comes after the first attempt (broker_wait 2s), and
// STATUS says the broker is down.
func TestReadyWithBrokerDown(t *testing.T) {
	start := time.Now()
	d := startDaemon(t, daemonOpts{systemd: true, brokerDown: true})
	ready, _ := d.notify.waitKV(t, 0, 60*time.Second, "READY=1")
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("READY=1 after %v with the broker down", took)
	}
	if s := ready.fields["STATUS"]; !strings.Contains(s, "broker down, retrying") {
		t.Errorf("STATUS with READY=1 is %q, want it to say the broker is down", s)
	}
	mark := d.notify.mark()
	d.signal(syscall.SIGTERM)
	d.notify.waitKV(t, mark, 10*time.Second, "STOPPING=1")
	if code := d.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// TestRestartUnderSystemd: the restart command replies, then the daemon stops and
// exits 75 for systemd (RestartForceExitStatus=75) to start it again.
func TestRestartUnderSystemd(t *testing.T) {
	d := startDaemon(t, daemonOpts{systemd: true})
	d.notify.waitKV(t, 0, 60*time.Second, "READY=1")
	op := newOperator(t, d)
	mark := d.notify.mark()
	res := decode[struct {
		Restarting bool `json:"restarting"`
	}](t, op.call(protocol.CmdRestart, nil))
	if !res.Restarting {
		t.Errorf("restart result %+v", res)
	}
	d.notify.waitKV(t, mark, 10*time.Second, "STOPPING=1")
	if code := d.wait(15 * time.Second); code != 75 {
		t.Errorf("exit code %d after restart, want 75", code)
	}
}

// TestRestartReexec: without systemd the daemon replaces itself with a fresh run of
// the same binary and arguments (same pid), which serves again.
func TestRestartReexec(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	d.waitLog("iot-hsm running", 1, 60*time.Second)
	op := newOperator(t, d)
	before := decode[protocol.Status](t, op.call(protocol.CmdStatus, nil))
	res := decode[struct {
		Restarting bool `json:"restarting"`
	}](t, op.call(protocol.CmdRestart, nil))
	if !res.Restarting {
		t.Errorf("restart result %+v", res)
	}
	d.waitLog("re-executing", 1, 15*time.Second)
	d.waitLog("iot-hsm running", 2, 60*time.Second)
	select {
	case <-d.exited:
		t.Fatalf("the daemon exited (%v) instead of re-executing", d.exitErr)
	default:
	}
	// The operator's session comes back with the broker; the new run answers.
	var after protocol.Status
	deadline := time.Now().Add(30 * time.Second)
	for {
		id, err := op.trySend(protocol.CmdStatus, nil)
		if err != nil {
			time.Sleep(200 * time.Millisecond)
		} else if r, ok := op.tryReply(id, 2*time.Second); ok {
			after = decode[protocol.Status](t, r)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the re-executed daemon does not answer")
		}
	}
	if after.StartedAt == nil || before.StartedAt == nil || !after.StartedAt.After(*before.StartedAt) {
		t.Errorf("started_at %v after the restart, %v before", after.StartedAt, before.StartedAt)
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
