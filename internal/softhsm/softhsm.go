// Package softhsm makes real SoftHSM2 tokens for tests, the demo and the daemon's
// --dev mode. Each token gets its own directory and its own copy of the SoftHSM2
// module, so tests never share library state (SoftHSM2 reads its configuration in
// C_Initialize). It does not import testing, so the daemon can link it; the testing
// wrapper is in softhsmtest.
package softhsm

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Well-known module locations on Debian (multiarch) and elsewhere.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// ModulePath finds the installed SoftHSM2 module, or "" when there is none.
func ModulePath() string {
	if p := os.Getenv("SOFTHSM2_MODULE"); p != "" {
		return p
	}
	for _, p := range modulePaths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// Token is one initialised SoftHSM2 token.
type Token struct {
	Dir    string // holds softhsm2.conf and tokens/
	Conf   string
	Module string // this test's private copy of libsofthsm2.so
	Label  string
	Serial string
	PIN    string
	SOPIN  string
}

// Create makes a token under dir (for the demo and the daemon's --dev mode as well
// as tests); softhsmtest.New wraps it for tests.
func Create(dir, label string) (*Token, error) {
	src := ModulePath()
	if src == "" {
		return nil, fmt.Errorf("softhsm2 is not installed (apt-get install softhsm2, or make deps)")
	}
	tokDir := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokDir, 0o700); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokDir+"\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = true\n"), 0o600); err != nil {
		return nil, err
	}
	mod := filepath.Join(dir, "libsofthsm2.so")
	if err := copyFile(src, mod); err != nil {
		return nil, err
	}
	tok := &Token{Dir: dir, Conf: conf, Module: mod, Label: label, PIN: DevPIN, SOPIN: DevSOPIN}
	out, err := tok.util("--init-token", "--free", "--label", label, "--pin", tok.PIN, "--so-pin", tok.SOPIN)
	if err != nil {
		return nil, fmt.Errorf("softhsm2-util --init-token: %v: %s", err, out)
	}
	out, err = tok.util("--show-slots")
	if err != nil {
		return nil, fmt.Errorf("softhsm2-util --show-slots: %v: %s", err, out)
	}
	serial, err := serialOf(out, label)
	if err != nil {
		return nil, err
	}
	tok.Serial = serial
	return tok, nil
}

// Open returns the token that Create made under dir earlier, or an error wrapping
// os.ErrNotExist when there is none.
func Open(dir, label string) (*Token, error) {
	tok := &Token{Dir: dir, Conf: filepath.Join(dir, "softhsm2.conf"), Module: filepath.Join(dir, "libsofthsm2.so"),
		Label: label, PIN: DevPIN, SOPIN: DevSOPIN}
	for _, f := range []string{tok.Conf, tok.Module} {
		if _, err := os.Stat(f); err != nil {
			return nil, err
		}
	}
	out, err := tok.util("--show-slots")
	if err != nil {
		return nil, fmt.Errorf("softhsm2-util --show-slots: %v: %s", err, out)
	}
	if tok.Serial, err = serialOf(out, label); err != nil {
		return nil, err
	}
	return tok, nil
}

// util runs softhsm2-util against this token's configuration.
func (tok *Token) util(args ...string) (string, error) {
	cmd := exec.Command("softhsm2-util", args...)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Tool runs an OpenSC pkcs11-tool command against this token's module.
func (tok *Token) Tool(args ...string) (string, error) {
	cmd := exec.Command("pkcs11-tool", append([]string{"--module", tok.Module}, args...)...)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var (
	labelLine  = regexp.MustCompile(`(?m)Label:[ \t]+(\S.*?)[ \t]*$`)
	serialLine = regexp.MustCompile(`Serial number:[ \t]+(\S+)`)
)

func serialOf(showSlots, label string) (string, error) {
	for _, block := range strings.Split(showSlots, "\nSlot ") {
		l, s := labelLine.FindStringSubmatch(block), serialLine.FindStringSubmatch(block)
		if l != nil && s != nil && l[1] == label {
			return s[1], nil
		}
	}
	return "", fmt.Errorf("softhsm2-util did not list token %q:\n%s", label, showSlots)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// The PINs of tokens made here. They guard lab and test keys only: a production
// token has its own PINs, set by its operator.
const (
	DevPIN   = "1234"
	DevSOPIN = "5678"
)
