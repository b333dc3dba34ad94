// Package testbin builds the iot-hsm binary for tests that run it as a user does
// (the daemon tests, the dashboard's browser test): once per test process and set
// of build flags, into a temporary directory that Cleanup removes.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

type build struct {
	once sync.Once
	path string
	err  error
}

var (
	mu     sync.Mutex
	builds = map[string]*build{}
	dirs   []string
)

// Build returns the path of iot-hsm built from this module with the extra
// `go build` flags, building it on the first call with those flags.
func Build(t testing.TB, flags ...string) string {
	t.Helper()
	key := strings.Join(flags, " ")
	mu.Lock()
	b := builds[key]
	if b == nil {
		b = &build{}
		builds[key] = b
	}
	mu.Unlock()
	b.once.Do(func() { b.path, b.err = goBuild(flags) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func goBuild(flags []string) (string, error) {
	dir, err := os.MkdirTemp("", "iot-hsm-testbin-")
	if err != nil {
		return "", err
	}
	mu.Lock()
	dirs = append(dirs, dir)
	mu.Unlock()
	path := filepath.Join(dir, "iot-hsm")
	args := append(append([]string{"build"}, flags...), "-o", path, ".")
	cmd := exec.Command("go", args...)
	cmd.Dir = moduleRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return path, nil
}

// moduleRoot is two levels above this file.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Cleanup removes what Build made; call it from TestMain after m.Run.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	for _, d := range dirs {
		os.RemoveAll(d)
	}
	dirs = nil
}
