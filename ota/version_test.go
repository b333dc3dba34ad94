package ota

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/iot-hsm/iot-hsm/protocol"
)

func TestVersionOrder(t *testing.T) {
	// Oldest first, as git describe names successive builds.
	order := []string{"v0.9.0", "v1.0.0-rc.1", "v1.0.0-rc.1-3-gabc1234", "v1.0.0-rc.2", "v1.0.0-rc.10",
		"1.0.0", "v1.0.0-1-gdeadbee", "v1.0.0-2-g0123456-dirty", "v1.0.1", "v1.2.0", "v1.10.0", "v2.0.0"}
	vs := make([]Version, len(order))
	for i, s := range order {
		v, err := ParseVersion(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		vs[i] = v
	}
	for i := range vs {
		for j := range vs {
			if got, want := vs[i].Compare(vs[j]), cmpInt(i, j); got != want {
				t.Errorf("%s vs %s: %d, want %d", order[i], order[j], got, want)
			}
		}
	}
	for _, bad := range []string{"devel", "local", "4f2a9c1", "", "v1.0", "v01.0.0", "v1.0.0-", "1.0.0-rc..1"} {
		if _, err := ParseVersion(bad); !errors.Is(err, ErrNoVersion) {
			t.Errorf("%q: %v, want ErrNoVersion", bad, err)
		}
	}
}

func TestAdmit(t *testing.T) {
	v := func(s string) Version {
		x, err := ParseVersion(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	floor := v("v1.5.0")
	for _, c := range []struct {
		running, to string
		floor       *Version
		allow       bool
		want        error
	}{
		{"v2.0.0", "v2.1.0", nil, false, nil},
		{"v2.0.0", "v2.0.0", nil, false, nil},
		{"v2.0.0", "v1.9.0", nil, false, ErrDowngrade},
		{"v2.0.0", "v1.9.0", nil, true, nil},
		{"v2.0.0", "v1.0.0", &floor, true, ErrBelowFloor},
		{"v2.0.0", "v1.5.0", &floor, true, nil},
		{"devel", "v2.0.0", nil, false, ErrDowngrade}, // a development build cannot be ordered
		{"devel", "v2.0.0", nil, true, nil},
		{"devel", "v1.0.0", &floor, true, ErrBelowFloor},
	} {
		err := admit(c.running, v(c.to), c.floor, c.allow)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s -> %s (floor %v, allow %v): %v, want %v", c.running, c.to, c.floor, c.allow, err, c.want)
		}
		if err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("%v does not wrap ErrRefused", err)
		}
	}
}

// binRig runs binary-mode updates of shell scripts that answer `version` as the
// daemon does, served over HTTP and signed with a minisign key made here.
type binRig struct {
	t     *testing.T
	priv  minisign.PrivateKey
	keys  Keys
	srv   *httptest.Server
	files map[string][]byte
}

func newBinRig(t *testing.T) *binRig {
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := &binRig{t: t, priv: priv, keys: Keys{pub}, files: map[string][]byte{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		http.ServeContent(w, req, "bin", time.Time{}, bytes.NewReader(r.files[req.URL.Path]))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func script(reports string) []byte { return []byte("#!/bin/sh\necho iot-hsm " + reports + "\n") }

// signWith signs data with the trusted comment, as `minisign -S -t comment` does.
func (r *binRig) signWith(data []byte, comment string) string {
	m := minisign.NewReader(bytes.NewReader(data))
	io.Copy(io.Discard, m)
	return string(m.SignWithComments(r.priv, comment, "signature from the test key"))
}

// update installs data over a binary that runs version running, with the floor
// (when not "") on the data partition, and returns the outcome and the installed
// binary's content.
func (r *binRig) update(running, floor string, data []byte, sig string, allow bool) (protocol.OTAStatus, string) {
	r.t.Helper()
	dir := r.t.TempDir()
	bin := filepath.Join(dir, "iot-hsm")
	os.WriteFile(bin, script(running), 0o755)
	state := filepath.Join(dir, "state")
	if floor != "" {
		os.MkdirAll(filepath.Join(state, "ota"), 0o700)
		os.WriteFile(filepath.Join(state, "ota", "min_version"), []byte(floor+"\n"), 0o600)
	}
	u, err := New(Options{Mode: ModeBinary, Keys: r.keys, StateDir: state, DownloadDir: filepath.Join(dir, "dl"),
		Binary: bin, Version: running, Health: func() Health { return Health{} }})
	if err != nil {
		r.t.Fatal(err)
	}
	defer u.Close()
	path := "/" + randomName()
	r.files[path] = data
	if _, err := u.Start(protocol.OTAUpdateArgs{URL: r.srv.URL + path, SHA256: sum(data), Size: int64(len(data)),
		Signature: sig, AllowDowngrade: allow}); err != nil {
		r.t.Fatal(err)
	}
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if st := u.Status(); st.Phase == protocol.OTAFailed || st.Phase == protocol.OTAReboot {
			b, _ := os.ReadFile(bin)
			return st, string(b)
		}
	}
	r.t.Fatalf("the update never ended: %+v", u.Status())
	return protocol.OTAStatus{}, ""
}

func randomName() string {
	b := make([]byte, 8)
	rand.Read(b)
	return sum(b)[:16]
}

// TestBinaryDowngrade: the version in the signature's trusted comment decides. An
// older build, though validly signed, is refused unless allow_downgrade is given,
// and never below the minimum version; a signature without a version, and a
// binary that is not the version its signature names, are refused.
func TestBinaryDowngrade(t *testing.T) {
	r := newBinRig(t)
	v1, v3 := script("v1.0.0"), script("v3.0.0")
	for _, c := range []struct {
		name, running, floor string
		data                 []byte
		comment              string
		allow                bool
		refused              string // "" installs
		code                 string
	}{
		{"newer", "v2.0.0", "", v3, "timestamp:1700000000\tversion:v3.0.0", false, "", ""},
		{"older", "v2.0.0", "", v1, "version:v1.0.0", false, "v1.0.0 is older than the running v2.0.0", protocol.CodePolicyDenied},
		{"older, allowed", "v2.0.0", "", v1, "version:v1.0.0", true, "", ""},
		{"below the floor", "v2.0.0", "v1.5.0", v1, "version:v1.0.0", true, "below the minimum version v1.5.0", protocol.CodePolicyDenied},
		{"over a development build", "devel", "", v3, "version:v3.0.0", false, "cannot be ordered", protocol.CodePolicyDenied},
		{"no version signed", "v2.0.0", "", v3, "timestamp:1700000000", false, "carries no version", protocol.CodeBadRequest},
		{"another version signed", "v2.0.0", "", v3, "version:v4.0.0", false, `reports "iot-hsm v3.0.0", its signature says version v4.0.0`, protocol.CodeBadRequest},
		{"unreadable floor", "v2.0.0", "whatever", v3, "version:v3.0.0", false, "the minimum version", protocol.CodeBadRequest},
	} {
		st, installed := r.update(c.running, c.floor, c.data, r.signWith(c.data, c.comment), c.allow)
		switch {
		case c.refused == "" && (st.Phase != protocol.OTAReboot || installed != string(c.data)):
			t.Errorf("%s: not installed: %+v", c.name, st)
		case c.refused != "" && (st.Phase != protocol.OTAFailed || !strings.Contains(st.Error, c.refused) || st.ErrorCode != c.code):
			t.Errorf("%s: %s %q (%s), want refused %s with %q", c.name, st.Phase, st.Error, st.ErrorCode, c.code, c.refused)
		case c.refused != "" && installed != string(script(c.running)):
			t.Errorf("%s: refused, yet the binary changed", c.name)
		}
	}
}

// TestFloorRises: a committed update raises the floor to the older of its two
// versions, and the floor never falls.
func TestFloorRises(t *testing.T) {
	dir := t.TempDir()
	u, err := New(Options{Mode: ModeBinary, Binary: "x", StateDir: dir, Version: "v2.0.0", Health: func() Health { return Health{} }})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, step := range []struct{ from, to, floor string }{
		{"devel", "v1.0.0", "v1.0.0"},
		{"v1.0.0", "v2.0.0", "v1.0.0"},
		{"v2.0.0", "v3.0.0", "v2.0.0"},
		{"v3.0.0", "v2.0.0", "v2.0.0"}, // one step back, allowed
		{"v2.0.0", "v2.1.0", "v2.0.0"},
		{"v2.1.0", "devel", "v2.0.0"},
	} {
		os.MkdirAll(u.dir(), 0o700)
		writeJSON(u.trialPath(), trial{Mode: ModeBinary, From: step.from, To: step.to})
		u.commit(trial{Mode: ModeBinary, From: step.from, To: step.to})
		f, err := u.floor()
		if err != nil || f == nil || f.String() != step.floor {
			t.Fatalf("after %s -> %s the floor is %v (%v), want %s", step.from, step.to, f, err, step.floor)
		}
	}
}

// TestInterruptedUpdate: an appliance that stops in the middle of an update (a power
// cut while RAUC writes the other slot) reports that update as failed after the
// restart, not as still under way, and can take the next one.
func TestInterruptedUpdate(t *testing.T) {
	r := newBinRig(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "iot-hsm")
	os.WriteFile(bin, script("v1.0.0"), 0o755)
	hold := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write(make([]byte, 10))
		w.(http.Flusher).Flush()
		<-hold
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(hold) }) // before srv.Close: cleanups run last first
	ended := make(chan struct{})
	var endOnce sync.Once
	open := func() *Updater {
		u, err := New(Options{Mode: ModeBinary, Keys: r.keys, StateDir: filepath.Join(dir, "state"),
			DownloadDir: filepath.Join(dir, "dl"), Binary: bin, Version: "v1.0.0", Health: func() Health { return Health{} },
			Busy: func(busy bool) {
				if !busy {
					endOnce.Do(func() { close(ended) })
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	u := open()
	if _, err := u.Start(protocol.OTAUpdateArgs{URL: srv.URL + "/bin", SHA256: sum(make([]byte, 1000)), Size: 1000,
		Signature: "sig"}); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); u.Status().Percent == 0 && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
	}
	if st := u.Status(); st.Phase != protocol.OTADownload {
		t.Fatalf("the update is not downloading: %+v", st)
	}
	// The power cut: the updater is never closed; a new one starts on the same disk.
	after := open()
	defer after.Close()
	st := after.Status()
	if st.Phase != protocol.OTAFailed || st.Error != ErrInterrupted.Error() {
		t.Fatalf("after the restart ota.status says %+v, want failed: %v", st, ErrInterrupted)
	}
	if b, _ := os.ReadFile(bin); string(b) != string(script("v1.0.0")) {
		t.Fatalf("the binary changed: %q", b)
	}
	// The first updater's download ends (and records it) before the test's
	// directories are removed: Busy(false) is its last step.
	u.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatalf("the cut-off download did not end: %+v", u.Status())
	}
}
