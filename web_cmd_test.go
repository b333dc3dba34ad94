package main

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/web"
)

func TestWebPasswd(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	const pw = "a long enough password"
	err := webCmd([]string{"passwd", "--state-dir", dir}, strings.NewReader(pw+"\n"+pw+"\n"), &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	wd := appliance.WebDir(dir)
	if err := web.CheckPassword(wd, pw); err != nil {
		t.Fatalf("the password set does not log in: %v", err)
	}
	data, _ := os.ReadFile(web.PasswordFile(wd))
	if strings.Contains(string(data), pw) || strings.Contains(out.String()+errOut.String(), pw) {
		t.Fatal("the password itself was written or printed")
	}
	if !strings.Contains(out.String(), "SHA-256") {
		t.Fatalf("no fingerprint printed: %q", out.String())
	}
	err = webCmd([]string{"passwd", "--state-dir", dir}, strings.NewReader("another one here\nanother one there\n"), &out, &errOut)
	if !errors.Is(err, web.ErrMismatch) || web.CheckPassword(wd, pw) != nil {
		t.Fatalf("mismatched passwords: %v; the old one must stay", err)
	}
	err = webCmd([]string{"passwd", "--state-dir", dir}, strings.NewReader("short\nshort\n"), &out, &errOut)
	if !errors.Is(err, web.ErrWeakPassword) {
		t.Fatalf("short password: %v", err)
	}
}
