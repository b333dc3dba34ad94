package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// procStatus is what /proc/<pid>/status says of a process's memory, in KiB.
type procStatus struct {
	VmRSS    int `json:"vm_rss_kib"`
	VmHWM    int `json:"vm_hwm_kib"`
	RssAnon  int `json:"rss_anon_kib"`
	RssFile  int `json:"rss_file_kib"`
	RssShmem int `json:"rss_shmem_kib"`
	Threads  int `json:"threads"`
	// PeakAnon is the highest RssAnon of a sampled run (samplePeak).
	PeakAnon int `json:"peak_rss_anon_kib,omitempty"`
}

func readStatus(pid int) (procStatus, error) {
	var st procStatus
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	defer f.Close()
	fields := map[string]*int{"VmRSS:": &st.VmRSS, "VmHWM:": &st.VmHWM, "RssAnon:": &st.RssAnon,
		"RssFile:": &st.RssFile, "RssShmem:": &st.RssShmem, "Threads:": &st.Threads}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 {
			if p := fields[f[0]]; p != nil {
				*p, _ = strconv.Atoi(f[1])
			}
		}
	}
	return st, sc.Err()
}

type mapping struct {
	Name   string `json:"name"`
	RSSKiB int    `json:"rss_kib"`
}

// smapsByFile groups a process's resident memory by what is mapped: the binary,
// each shared library, the state file, anonymous memory (Go heap and C malloc).
func smapsByFile(pid int) ([]mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	by := map[string]int{}
	cur := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fs := strings.Fields(line)
		if len(fs) >= 5 && strings.Contains(fs[0], "-") && !strings.HasSuffix(fs[0], ":") {
			cur = "anonymous (Go heap, goroutine stacks, C malloc)"
			if len(fs) >= 6 {
				cur = filepath.Base(fs[5])
				if strings.HasPrefix(fs[5], "[") {
					cur = fs[5]
				}
			}
			continue
		}
		if len(fs) >= 2 && fs[0] == "Rss:" {
			n, _ := strconv.Atoi(fs[1])
			by[cur] += n
		}
	}
	var out []mapping
	for k, v := range by {
		if v > 0 {
			out = append(out, mapping{k, v})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].RSSKiB > out[j].RSSKiB })
	return out, sc.Err()
}

// daemon is the real `iot-hsm run --config` as a child process, against the benchmark's
// mosquitto and a SoftHSM2 token of its own.
type daemon struct {
	bin, work, brokerURL string
	tok                  *softhsm.Token
	state                string
	o                    *operator
}

type started struct {
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
	t0      time.Time
	online  time.Duration
	ready   time.Duration // 0: no READY=1 arrived
}

func newDaemon(bin, work, brokerURL string, o *operator) (*daemon, error) {
	tok, err := softhsm.Create(filepath.Join(work, "daemon-token"), "bench-daemon")
	if err != nil {
		return nil, err
	}
	return &daemon{bin: bin, work: work, brokerURL: brokerURL, tok: tok, state: filepath.Join(work, "daemon-state"), o: o}, nil
}

func (d *daemon) config(deviceID string) (string, error) {
	conf := fmt.Sprintf(`device_id = %q
state_dir = %q
log_level = "info"
queue_size = 128
allow_digest = true

[mqtt]
broker = %q
allow_plaintext = true

[[pkcs11]]
module = %q
token = "pkcs11:serial=%s"
pin = %q
`, deviceID, d.state, d.brokerURL, d.tok.Module, d.tok.Serial, d.tok.PIN)
	p := filepath.Join(d.work, deviceID+".toml")
	return p, os.WriteFile(p, []byte(conf), 0o600)
}

// start runs the daemon and waits for its first retained online status. A datagram
// socket named by NOTIFY_SOCKET catches READY=1 if the daemon sends it.
func (d *daemon) start(deviceID string) (*started, error) {
	cfg, err := d.config(deviceID)
	if err != nil {
		return nil, err
	}
	topics := protocol.Topics{Root: protocol.DefaultRoot, Device: deviceID}
	online := make(chan time.Time, 1)
	var once sync.Once
	err = d.o.c.Subscribe(topics.Status(), func(_ string, p []byte) {
		var st protocol.Status
		if json.Unmarshal(p, &st) == nil && st.Online {
			at := time.Now()
			once.Do(func() { online <- at })
		}
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = d.o.c.Unsubscribe(topics.Status()) }()

	sock := filepath.Join(d.work, deviceID+".notify")
	_ = os.Remove(sock)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ready := make(chan time.Time, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			if slices.Contains(strings.Split(string(buf[:n]), "\n"), "READY=1") {
				select {
				case ready <- time.Now():
				default:
				}
			}
		}
	}()

	s := &started{logPath: filepath.Join(d.work, deviceID+".log"), done: make(chan struct{})}
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	s.cmd = exec.Command(d.bin, "run", "--config", cfg)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.Env = append(envWithout("SOFTHSM2_CONF", "NOTIFY_SOCKET"), "SOFTHSM2_CONF="+d.tok.Conf, "NOTIFY_SOCKET="+sock)
	s.t0 = time.Now()
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		_ = s.cmd.Wait()
		close(s.done)
	}()
	select {
	case at := <-online:
		s.online = at.Sub(s.t0)
	case <-s.done:
		log, _ := os.ReadFile(s.logPath)
		return nil, fmt.Errorf("the daemon exited at start-up:\n%s", log)
	case <-time.After(30 * time.Second):
		s.stop()
		return nil, fmt.Errorf("no online status from the daemon within 30s (log %s)", s.logPath)
	}
	// READY=1 may come before or after the status.
	select {
	case at := <-ready:
		s.ready = at.Sub(s.t0)
	case <-time.After(5 * time.Second):
	}
	return s, nil
}

// stop ends the child this program started, by its pid: SIGTERM (a clean shutdown
// that publishes the offline status), SIGKILL if it hangs.
func (s *started) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

func envWithout(names ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, k) {
			out = append(out, kv)
		}
	}
	return out
}

// logPhases reads the daemon's own log (slog text, millisecond times) for when each
// start-up step finished, relative to the process start.
func logPhases(s *started) map[string]float64 {
	marks := map[string]string{
		"HSM":                     "PKCS#11 modules loaded, tokens logged in",
		"connected to the broker": "MQTT connected",
		"iot-hsm running":         "start-up done (iot-hsm running)",
	}
	out := map[string]float64{}
	f, err := os.Open(s.logPath)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	first := true
	for sc.Scan() {
		line := sc.Text()
		ts, ok := logTime(line)
		if !ok {
			continue
		}
		at := ms(ts.Sub(s.t0))
		if first {
			out["first log line"] = at
			first = false
		}
		for msg, name := range marks {
			if _, seen := out[name]; !seen && (strings.Contains(line, "msg="+msg+" ") || strings.Contains(line, "msg=\""+msg+"\"")) {
				out[name] = at
			}
		}
	}
	return out
}

func logTime(line string) (time.Time, bool) {
	v, ok := strings.CutPrefix(line, "time=")
	if !ok {
		return time.Time{}, false
	}
	v, _, _ = strings.Cut(v, " ")
	t, err := time.Parse(time.RFC3339Nano, v)
	return t, err == nil
}
