package audit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, path string, n int) {
	t.Helper()
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < n; i++ {
		if _, err := l.Append(Record{RequestID: "r" + string(rune('a'+i)), Command: "sign", Kind: "certificate", Serial: "0a", Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestChainSurvivesReopenAndVerifies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	write(t, path, 3)
	write(t, path, 2) // a restart continues the chain
	f, _ := os.Open(path)
	defer f.Close()
	n, err := Verify(f)
	if err != nil || n != 5 {
		t.Fatalf("verify: %d records, %v", n, err)
	}
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tail := l.Tail(2)
	if len(tail) != 2 || tail[1].Seq != 5 || tail[1].Prev != tail[0].Hash {
		t.Fatalf("tail %+v", tail)
	}
}

func TestTamperingIsFound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	write(t, path, 4)
	data, _ := os.ReadFile(path)
	lines := strings.SplitAfter(string(data), "\n")
	cases := map[string]string{
		"altered":   strings.Join(append(append([]string{}, lines[:1]...), append([]string{strings.Replace(lines[1], `"serial":"0a"`, `"serial":"0b"`, 1)}, lines[2:]...)...), ""),
		"removed":   lines[0] + lines[2] + lines[3],
		"reordered": lines[0] + lines[2] + lines[1] + lines[3],
		"garbage":   lines[0] + "not json\n" + lines[1],
	}
	want := map[string]string{"altered": "line 2", "removed": "line 2", "reordered": "line 2", "garbage": "line 2"}
	for name, text := range cases {
		_, err := Verify(bytes.NewReader([]byte(text)))
		if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), want[name]) {
			t.Errorf("%s: %v, want a broken link at %s", name, err, want[name])
		}
		// A tampered trail is refused at start-up too.
		p := filepath.Join(t.TempDir(), name)
		os.WriteFile(p, []byte(text), 0o600)
		if _, err := Open(p); !errors.Is(err, ErrBroken) {
			t.Errorf("%s: Open accepted a broken trail: %v", name, err)
		}
	}
	// Truncating the end cannot be seen from the file alone; the head hash published
	// in audit.tail replies is what an auditor compares against.
	if n, err := Verify(bytes.NewReader([]byte(lines[0] + lines[1]))); err != nil || n != 2 {
		t.Fatalf("a prefix is a valid trail: %d %v", n, err)
	}
}
