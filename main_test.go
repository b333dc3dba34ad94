package main

import (
	"bytes"
	"errors"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/audit"
)

// `audit verify --help` explains the command instead of opening a file named
// --help; a wrong command line is a usage error (exit 2); a good trail's head hash is
// printed, the one audit.tail shows.
func TestAuditVerifyCommandLine(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := auditCmd([]string{"verify", "--help"}, &out, &errOut); err != nil || !strings.Contains(errOut.String()+out.String(), "usage: iot-hsm audit verify FILE") {
		t.Errorf("--help: %v, %q %q", err, out.String(), errOut.String())
	}
	for _, args := range [][]string{nil, {"verify"}, {"verify", "a", "b"}, {"check", "x"}, {"verify", "--bogus", "x"}} {
		var ue usageError
		if err := auditCmd(args, &out, &errOut); !errors.As(err, &ue) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"slot.provision", "slot.selfsign"} {
		if _, err := l.Append(audit.Record{RequestID: "r", Command: cmd, Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	head := l.Head()
	l.Close()
	out.Reset()
	if err := auditCmd([]string{"verify", path}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if want := "head: seq 2, hash " + head.Hash + "\n"; !strings.Contains(out.String(), "2 records, chain intact") || !strings.HasSuffix(out.String(), want) {
		t.Errorf("audit verify printed %q, want it to end with %q", out.String(), want)
	}
}

// A plain `go build` in a checkout reports the revision it was built from; an
// -ldflags -X version or a module version wins.
func TestVersionFromBuildInfo(t *testing.T) {
	vcs := func(rev, modified string) *debug.BuildInfo {
		return &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}}
	}
	for _, tc := range []struct {
		bi   *debug.BuildInfo
		want string
	}{
		{vcs("4e9f82f0aefb1234567890abcdef", "false"), "devel-4e9f82f0aefb"},
		{vcs("4e9f82f0aefb1234567890abcdef", "true"), "devel-4e9f82f0aefb-dirty"},
		{&debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
		{&debug.BuildInfo{Main: debug.Module{Version: "v1.2.0"}}, "v1.2.0"},
	} {
		if got := versionOf(tc.bi, true); got != tc.want {
			t.Errorf("versionOf(%v) = %q, want %q", tc.bi.Settings, got, tc.want)
		}
	}
}
