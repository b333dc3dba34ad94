package ota

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"aead.dev/minisign"
)

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// cutServer serves data, dropping the connection halfway through the first response.
func cutServer(t *testing.T, data []byte) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.Header().Set("Content-Length", fmt.Sprint(len(data)))
			w.Write(data[:len(data)/2])
			w.(http.Flusher).Flush()
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
			return
		}
		if r.Header.Get("Range") == "" {
			t.Errorf("second request without Range")
		}
		http.ServeContent(w, r, "f", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func TestFetchResumes(t *testing.T) {
	data := make([]byte, 300<<10)
	rand.Read(data)
	srv, n := cutServer(t, data)
	var last int64
	path, err := Fetch(context.Background(), Download{URL: srv.URL, SHA256: sum(data), Size: int64(len(data)), Dir: t.TempDir(),
		Progress: func(done, total int64) { last = done }})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got, data) || n.Load() != 2 || last != int64(len(data)) {
		t.Fatalf("requests %d, progress %d, equal %v", n.Load(), last, bytes.Equal(got, data))
	}
}

func TestFetchRefuses(t *testing.T) {
	data := []byte(strings.Repeat("x", 1000))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "f", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	dir := t.TempDir()
	for name, d := range map[string]Download{
		"hash":     {SHA256: strings.Repeat("00", 32), Size: 1000},
		"too big":  {SHA256: sum(data), Size: 1000, MaxSize: 999},
		"too long": {SHA256: sum(data[:10]), Size: 10},
		"bad hash": {SHA256: "zz", Size: 1000},
		"no space": {SHA256: sum(data), Size: 1 << 62},
	} {
		d.URL, d.Dir, d.Attempts = srv.URL, dir, 1
		if _, err := Fetch(context.Background(), d); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v, want refused", name, err)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.bin")); len(m) != 0 {
		t.Errorf("refused downloads left %v", m)
	}
}

func TestVerifyFile(t *testing.T) {
	pub, priv, _ := minisign.GenerateKey(rand.Reader)
	otherPub, other, _ := minisign.GenerateKey(rand.Reader)
	text, _ := pub.MarshalText()
	keys, err := ParseKeys([]string{string(text)})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "bin")
	os.WriteFile(f, []byte("payload"), 0o600)
	legacy := minisign.Sign(priv, []byte("payload"))
	r := minisign.NewReader(strings.NewReader("payload"))
	io.Copy(io.Discard, r)
	hashed := r.Sign(priv)
	for _, sig := range [][]byte{legacy, hashed} {
		if _, err := keys.VerifyFile(f, sig); err != nil {
			t.Errorf("good signature refused: %v", err)
		}
	}
	if _, err := keys.VerifyFile(f, minisign.Sign(other, []byte("payload"))); !errors.Is(err, ErrRefused) {
		t.Errorf("unknown key: %v", err)
	}
	os.WriteFile(f, []byte("payloaD"), 0o600)
	if _, err := keys.VerifyFile(f, hashed); !errors.Is(err, ErrRefused) {
		t.Errorf("tampered file: %v", err)
	}
	if _, err := (Keys{otherPub}[:0]).VerifyFile(f, hashed); !errors.Is(err, ErrRefused) {
		t.Errorf("no keys: %v", err)
	}
}

func TestHealthMeets(t *testing.T) {
	base := Health{ConfigLoaded: true, BrokerUp: true, HSMsPresent: []string{"a", "b"}, SlotsConnected: []string{"a/01"}}
	if err := base.Meets(base); err != nil {
		t.Fatal(err)
	}
	now := Health{ConfigLoaded: true, BrokerUp: false, HSMsPresent: []string{"a"}, SlotsConnected: nil}
	err := now.Meets(base)
	for _, want := range []string{"broker session down", "HSMs absent: b", "slots not connected: a/01"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
}

// TestBootCheckCrashLoop: a binary on trial that keeps starting without proving
// itself (it crashes) is replaced by the previous one at the third start.
func TestBootCheckCrashLoop(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "iot-hsm")
	os.WriteFile(bin, []byte("old"), 0o755)
	os.WriteFile(filepath.Join(dir, "new"), []byte("new"), 0o755)
	prev, err := swapBinary(bin, filepath.Join(dir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	if err := writeJSON(filepath.Join(state, "ota", "trial.json"), trial{Mode: ModeBinary, From: "v1", Binary: bin, Prev: prev}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= maxStarts; i++ {
		if rb, err := BootCheck(state); rb || err != nil {
			t.Fatalf("start %d: rolled back %v, %v", i, rb, err)
		}
	}
	if rb, err := BootCheck(state); !rb || err != nil {
		t.Fatalf("third start: rolled back %v, %v", rb, err)
	}
	if b, _ := os.ReadFile(bin); string(b) != "old" {
		t.Fatalf("binary %q after the rollback", b)
	}
	last, err := readJSON[struct{ Phase string }](filepath.Join(state, "ota", "last.json"))
	if err != nil || last.Phase != "rolled_back" {
		t.Fatalf("last outcome %+v %v", last, err)
	}
}
