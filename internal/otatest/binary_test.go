// Package otatest runs over-the-air updates end to end with real processes: the
// daemon built twice (and once broken) with different versions, served over HTTP,
// signed with minisign keys made here, under a supervisor that restarts it as
// systemd's unit does (exit 75 and failures restart it).
package otatest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

var repoRoot, _ = filepath.Abs(filepath.Join("..", ".."))

// build builds iot-hsm with the version (and extra -ldflags) into dir.
func build(t *testing.T, dir, ver, extra string) string {
	t.Helper()
	out := filepath.Join(dir, "iot-hsm-"+ver)
	cmd := exec.Command("go", "build", "-o", out, "-ldflags", "-X main.version="+ver+" "+extra, ".")
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", ver, err, b)
	}
	return out
}

// supervisor runs the daemon as the unit does: Restart=on-failure plus
// RestartForceExitStatus=75, with NOTIFY_SOCKET set so the daemon exits 75 to restart.
type supervisor struct {
	t      *testing.T
	bin    string
	args   []string
	env    []string
	log    *syncbuf.Buffer
	starts atomic.Int32
	mu     sync.Mutex
	cmd    *exec.Cmd
	stop   chan struct{}
	done   chan struct{}
}

func supervise(t *testing.T, bin string, args []string) *supervisor {
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, err := conn.Read(buf); err != nil {
				return
			}
		}
	}()
	s := &supervisor{t: t, bin: bin, args: args, log: &syncbuf.Buffer{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, e := range os.Environ() {
		switch k, _, _ := strings.Cut(e, "="); k {
		case "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "SOFTHSM2_CONF":
			continue
		}
		s.env = append(s.env, e)
	}
	s.env = append(s.env, "NOTIFY_SOCKET="+sock)
	go s.loop()
	t.Cleanup(func() {
		close(s.stop)
		s.mu.Lock()
		if s.cmd != nil && s.cmd.Process != nil {
			s.cmd.Process.Kill()
		}
		s.mu.Unlock()
		<-s.done
		if t.Failed() {
			t.Logf("daemon log:\n%s", s.log.String())
		}
	})
	return s
}

func (s *supervisor) loop() {
	defer close(s.done)
	for {
		cmd := exec.Command(s.bin, s.args...)
		cmd.Env, cmd.Stdout, cmd.Stderr = s.env, s.log, s.log
		s.mu.Lock()
		err := cmd.Start()
		s.cmd = cmd
		s.mu.Unlock()
		if err != nil {
			fmt.Fprintf(s.log, "supervisor: start: %v\n", err)
			return
		}
		s.starts.Add(1)
		err = cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		fmt.Fprintf(s.log, "supervisor: exited with %d (%v)\n", code, err)
		select {
		case <-s.stop:
			return
		default:
		}
		if code == 0 || s.starts.Load() > 20 {
			return
		}
		time.Sleep(300 * time.Millisecond) // RestartSec
	}
}

// operator talks to the daemon over MQTT across its restarts; it keeps the OTA
// events the daemon publishes.
type operator struct {
	*mqtttest.Client
	t        *testing.T
	deviceID string
}

func newOperator(t *testing.T, broker, deviceID string) *operator {
	t.Helper()
	// The embedded broker comes up with the daemon.
	addr := strings.TrimPrefix(broker, "tcp://")
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		conn, err := net.Dial("tcp", addr)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the broker at %s does not come up: %v", addr, err)
		}
	}
	c := mqtttest.StartWith(t, mqtt.Config{Broker: broker, AllowPlaintext: true, CleanSession: true, ConnectTimeout: 25 * time.Second},
		mqtttest.Options{Name: "op", Watch: []string{eventsTopic(deviceID)}})
	return &operator{Client: c, t: t, deviceID: deviceID}
}

func eventsTopic(deviceID string) string { return protocol.DefaultRoot + "/" + deviceID + "/events" }

// callID sends cmd with the given request id until a new reply comes (the daemon
// may be restarting) and returns it.
func (o *operator) callID(id, cmd string, args any, timeout time.Duration) protocol.Reply {
	o.t.Helper()
	next := len(o.Raw(id)) + 1
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		_, payload := o.Request(id, args)
		o.Send(protocol.DefaultRoot+"/"+o.deviceID+"/cmd/"+cmd, payload)
		if r, ok := o.Reply(id, next, 2*time.Second); ok {
			return r
		}
	}
	o.t.Fatalf("no reply to %s %s within %v", cmd, id, timeout)
	return protocol.Reply{}
}

func (o *operator) call(cmd string, args any) protocol.Reply {
	o.t.Helper()
	return o.callID(mqtttest.RandomID(), cmd, args, 60*time.Second)
}

func (o *operator) phases() []string {
	return mqtttest.OTAPhases(o.Messages(eventsTopic(o.deviceID)))
}

func decode[T any](t *testing.T, r protocol.Reply) T {
	t.Helper()
	return mqtttest.Result[T](t, r)
}

// waitOTA polls ota.status until the daemon runs version ver and the update's phase
// is phase.
func (o *operator) waitOTA(ver, phase string, timeout time.Duration) protocol.OTAStatus {
	o.t.Helper()
	deadline := time.Now().Add(timeout)
	var st protocol.OTAStatus
	for time.Now().Before(deadline) {
		r := o.callID(mqtttest.RandomID(), protocol.CmdOTAStatus, nil, timeout)
		if r.OK {
			json.Unmarshal(r.Result, &st)
			if st.Version == ver && st.Phase == phase {
				return st
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	o.t.Fatalf("ota.status never showed version %s in phase %s; last: %+v", ver, phase, st)
	return st
}

// server serves artifacts; cutOnce makes the first GET of a path end halfway.
type server struct {
	*httptest.Server
	mu     sync.Mutex
	files  map[string][]byte
	cut    map[string]bool
	ranges []string
	gets   int
}

func newServer(t *testing.T) *server {
	s := &server{files: map[string][]byte{}, cut: map[string]bool{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		data, ok := s.files[r.URL.Path]
		cut := s.cut[r.URL.Path]
		s.cut[r.URL.Path] = false
		s.gets++
		if rg := r.Header.Get("Range"); rg != "" {
			s.ranges = append(s.ranges, r.URL.Path+" "+rg)
		}
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		if cut {
			// Announce the whole body, send half, and drop the connection.
			w.Header().Set("Content-Length", fmt.Sprint(len(data)))
			w.WriteHeader(http.StatusOK)
			w.Write(data[:len(data)/2])
			w.(http.Flusher).Flush()
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		http.ServeContent(w, r, "iot-hsm", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) put(path string, data []byte, cutOnce bool) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[path] = data
	s.cut[path] = cutOnce
	return s.URL + path
}

// sign makes a prehashed (ED) signature, minisign's default since 0.8, whose trusted
// comment names the version as `minisign -S -t "version:..."` does; "" leaves
// minisign's default comment, which names none.
func sign(t *testing.T, key minisign.PrivateKey, data []byte, version string) string {
	t.Helper()
	r := minisign.NewReader(bytes.NewReader(data))
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatal(err)
	}
	if version == "" {
		return string(r.Sign(key))
	}
	return string(r.SignWithComments(key, "timestamp:1700000000\tversion:"+version, "signature from the test key"))
}

func sha(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha(b)
}
