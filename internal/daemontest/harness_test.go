// Package daemontest runs the real iot-hsm binary the way systemd does: with a
// notify socket the test reads, WATCHDOG_USEC set, signals, and commands over MQTT.
// It also checks the unit file in dist/ with systemd-analyze.
package daemontest

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
	"github.com/iot-hsm/iot-hsm/internal/testbin"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// repoRoot is the module root, two levels up from this package.
var repoRoot, _ = filepath.Abs(filepath.Join("..", ".."))

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// binary is iot-hsm with the test-only wedge hook (-tags wedgetest) and, when the
// tests run with -race, the race detector.
func binary(t *testing.T) string {
	t.Helper()
	flags := []string{"-tags", "wedgetest"}
	if raceEnabled {
		flags = append(flags, "-race")
	}
	return testbin.Build(t, flags...)
}

// notifyMsg is one datagram on the notify socket, split into its assignments.
type notifyMsg struct {
	at     time.Time
	raw    string
	fields map[string]string
}

func (m notifyMsg) has(kv string) bool {
	k, v, _ := strings.Cut(kv, "=")
	got, ok := m.fields[k]
	return ok && got == v
}

// notifySocket is what systemd listens on: a unixgram socket.
type notifySocket struct {
	path string
	mu   sync.Mutex
	msgs []notifyMsg
	news chan struct{}
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	// A short directory: socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &notifySocket{path: filepath.Join(dir, "notify"), news: make(chan struct{}, 1)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 64*1024)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			m := notifyMsg{at: time.Now(), raw: string(buf[:k]), fields: map[string]string{}}
			for _, line := range strings.Split(m.raw, "\n") {
				if key, v, ok := strings.Cut(line, "="); ok {
					m.fields[key] = v
				}
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, m)
			n.mu.Unlock()
			select {
			case n.news <- struct{}{}:
			default:
			}
		}
	}()
	return n
}

// all returns every message so far.
func (n *notifySocket) all() []notifyMsg {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]notifyMsg(nil), n.msgs...)
}

// mark is a position in the message stream: waits look only after it.
func (n *notifySocket) mark() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.msgs)
}

// waitFor returns the first message after position from that matches, and its
// position.
func (n *notifySocket) waitFor(t *testing.T, from int, timeout time.Duration, what string, match func(notifyMsg) bool) (notifyMsg, int) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		msgs := n.all()
		for i := from; i < len(msgs); i++ {
			if match(msgs[i]) {
				return msgs[i], i
			}
		}
		select {
		case <-n.news:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			var seen []string
			for _, m := range msgs[from:] {
				seen = append(seen, fmt.Sprintf("%q", m.raw))
			}
			t.Fatalf("no %s on the notify socket within %v; after position %d saw: %s", what, timeout, from, strings.Join(seen, ", "))
		}
	}
}

func (n *notifySocket) waitKV(t *testing.T, from int, timeout time.Duration, kv string) (notifyMsg, int) {
	t.Helper()
	return n.waitFor(t, from, timeout, kv, func(m notifyMsg) bool { return m.has(kv) })
}

// pings returns the times of the WATCHDOG=1 messages between two instants.
func (n *notifySocket) pings(from, to time.Time) []time.Time {
	var out []time.Time
	for _, m := range n.all() {
		if m.has("WATCHDOG=1") && !m.at.Before(from) && m.at.Before(to) {
			out = append(out, m.at)
		}
	}
	return out
}

// lastStatus is the last STATUS= sent so far.
func (n *notifySocket) lastStatus() string {
	msgs := n.all()
	for i := len(msgs) - 1; i >= 0; i-- {
		if s, ok := msgs[i].fields["STATUS"]; ok {
			return s
		}
	}
	return ""
}

// daemonOpts say how to start the daemon.
type daemonOpts struct {
	systemd  bool          // NOTIFY_SOCKET (and WATCHDOG_USEC when watchdog > 0)
	watchdog time.Duration // WATCHDOG_USEC
	wedge    string        // IOT_HSM_TEST_WEDGE: <command>[:<deadline>]
	// brokerDown configures a broker nobody listens on instead of the embedded one.
	brokerDown bool
}

// daemon is one running iot-hsm.
type daemon struct {
	t        *testing.T
	cmd      *exec.Cmd
	log      *syncbuf.Buffer
	dir      string
	config   string
	broker   string
	deviceID string
	notify   *notifySocket
	exited   chan struct{}
	exitErr  error
}

// baseConfig is the test's configuration file: short bounds so that wedging and
// stopping are seen in seconds.
const baseConfig = `device_id = "%s"
log_level = "info"

[service]
broker_wait = "2s"
stop_timeout = "3s"
hung_grace = "1s"

# Only the daemon's own token: other packages' tests plug virtual YubiKeys into the
# pcscd all tests share.
[yubikey]
disabled = true
`

// startDaemon runs `iot-hsm run --dev --config <tmp> --state-dir <tmp> --dev-listen
// 127.0.0.1:<free>`. The environment is the test's minus anything systemd would set,
// plus what o asks for.
func startDaemon(t *testing.T, o daemonOpts) *daemon {
	t.Helper()
	bin := binary(t)
	dir := t.TempDir()
	d := &daemon{t: t, log: &syncbuf.Buffer{}, dir: dir, config: filepath.Join(dir, "config.toml"),
		deviceID: "ihsm-e2e-" + mqtttest.RandomID(), exited: make(chan struct{})}
	listen := fmt.Sprintf("127.0.0.1:%d", brokertest.FreePort(t))
	d.broker = "tcp://" + listen
	args := []string{"run", "--dev", "--config", d.config, "--state-dir", filepath.Join(dir, "state")}
	if o.brokerDown {
		d.writeConfig(fmt.Sprintf(baseConfig, d.deviceID) + fmt.Sprintf("\n[mqtt]\nbroker = %q\nallow_plaintext = true\n", d.broker))
	} else {
		d.writeConfig(fmt.Sprintf(baseConfig, d.deviceID))
		args = append(args, "--dev-listen", listen)
	}
	d.command(bin, args...)
	if o.systemd {
		d.notify = listenNotify(t)
		d.cmd.Env = append(d.cmd.Env, "NOTIFY_SOCKET="+d.notify.path)
		if o.watchdog > 0 {
			d.cmd.Env = append(d.cmd.Env, fmt.Sprintf("WATCHDOG_USEC=%d", o.watchdog.Microseconds()))
		}
	}
	if o.wedge != "" {
		d.cmd.Env = append(d.cmd.Env, "IOT_HSM_TEST_WEDGE="+o.wedge)
	}
	d.launch()
	return d
}

// command prepares the daemon's process: the test's environment minus anything
// systemd (or an earlier test) would set.
func (d *daemon) command(bin string, args ...string) {
	d.cmd = exec.Command(bin, args...)
	d.cmd.Dir = d.dir
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	for _, e := range os.Environ() {
		switch k, _, _ := strings.Cut(e, "="); k {
		case "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "IOT_HSM_TEST_WEDGE", "SOFTHSM2_CONF":
			continue
		}
		d.cmd.Env = append(d.cmd.Env, e)
	}
}

// launch starts the prepared process and, at the end of the test, kills it (waking
// it first if a test stopped it), fails on a data race it reported, and shows its
// log when the test failed.
func (d *daemon) launch() {
	t := d.t
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.exitErr = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			d.cmd.Process.Signal(syscall.SIGCONT)
			d.cmd.Process.Kill()
			<-d.exited
		}
		if strings.Contains(d.log.String(), "DATA RACE") {
			t.Error("the race detector reported a data race in the daemon")
		}
		if t.Failed() {
			t.Logf("daemon (pid %d) log:\n%s", d.cmd.Process.Pid, d.log.String())
		}
	})
}

func (d *daemon) writeConfig(text string) {
	d.t.Helper()
	if err := os.WriteFile(d.config, []byte(text), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

func (d *daemon) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
}

// wait returns the exit code once the daemon has exited, failing after timeout.
func (d *daemon) wait(timeout time.Duration) int {
	d.t.Helper()
	select {
	case <-d.exited:
	case <-time.After(timeout):
		d.t.Fatalf("the daemon did not exit within %v", timeout)
	}
	if d.exitErr == nil {
		return 0
	}
	if ee, ok := d.exitErr.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	d.t.Fatalf("waiting for the daemon: %v", d.exitErr)
	return -1
}

// waitLog waits for the daemon's log to hold s n times.
func (d *daemon) waitLog(s string, n int, timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for strings.Count(d.log.String(), s) < n {
		if time.Now().After(deadline) {
			d.t.Fatalf("the daemon log does not show %q %d times within %v", s, n, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// operator is a PKI or an operator's script talking to the daemon over MQTT; it
// keeps the status documents the daemon publishes.
type operator struct {
	*mqtttest.Client
	t *testing.T
	d *daemon
}

func newOperator(t *testing.T, d *daemon) *operator {
	t.Helper()
	c := mqtttest.Start(t, d.broker, mqtttest.Options{Name: "op", Watch: []string{d.statusTopic()}})
	return &operator{Client: c, t: t, d: d}
}

func (d *daemon) statusTopic() string { return protocol.DefaultRoot + "/" + d.deviceID + "/status" }

// send publishes a command and returns its request id.
func (o *operator) send(cmd string, args any) string {
	o.t.Helper()
	id, err := o.trySend(cmd, args)
	if err != nil {
		o.t.Fatal(err)
	}
	return id
}

// trySend is send for a broker that may be coming back.
func (o *operator) trySend(cmd string, args any) (string, error) {
	id, payload := o.Request("", args)
	return id, o.Send(protocol.DefaultRoot+"/"+o.d.deviceID+"/cmd/"+cmd, payload)
}

func (o *operator) reply(id string, timeout time.Duration) protocol.Reply {
	o.t.Helper()
	r, ok := o.Reply(id, 1, timeout)
	if !ok {
		o.t.Fatalf("no reply to %s within %v", id, timeout)
	}
	return r
}

// tryReply is reply without failing: for a daemon that may not be listening yet.
func (o *operator) tryReply(id string, timeout time.Duration) (protocol.Reply, bool) {
	return o.Reply(id, 1, timeout)
}

func (o *operator) call(cmd string, args any) protocol.Reply {
	o.t.Helper()
	return o.reply(o.send(cmd, args), 30*time.Second)
}

// lastStatus is the last status document seen on the status topic.
func (o *operator) lastStatus() (protocol.Status, bool) {
	var st protocol.Status
	b := o.Last(o.d.statusTopic())
	return st, b != nil && json.Unmarshal(b, &st) == nil
}

func decode[T any](t *testing.T, r protocol.Reply) T {
	t.Helper()
	return mqtttest.Result[T](t, r)
}
