package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/web"
)

const webUsage = `usage: iot-hsm web passwd [--config FILE | --dev] [--state-dir DIR]

Sets the web dashboard's password: it is read twice from the terminal (or two lines
of standard input) and only its argon2id hash is stored, in <state_dir>/web/password.
Logins already open stay open until they expire or log out; a running dashboard
reads the new hash at the next login.
`

// webCmd is `iot-hsm web passwd`, for the appliance's console.
func webCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "passwd" {
		if len(args) > 0 && isHelp(args[0]) {
			fmt.Fprint(stdout, webUsage)
			return nil
		}
		return usageError("usage: iot-hsm web passwd [--config FILE | --dev] [--state-dir DIR]")
	}
	fs := flag.NewFlagSet("web passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, webUsage) }
	var src appliance.Source
	fs.StringVar(&src.File, "config", "", "configuration file (TOML)")
	fs.BoolVar(&src.Dev, "dev", false, "the development setup's state directory")
	fs.StringVar(&src.StateDir, "state-dir", "", "state directory (overrides the configuration)")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError("")
	}
	if src.File == "" && !src.Dev && src.StateDir == "" {
		return usageError("web passwd: give --config FILE, --dev or --state-dir DIR")
	}
	stateDir, err := webStateDir(src)
	if err != nil {
		return err
	}
	pw, err := readNewPassword(stdin, stderr)
	if err != nil {
		return err
	}
	dir := appliance.WebDir(stateDir)
	if err := web.SetPassword(dir, pw); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "dashboard password set (%s)\n", web.PasswordFile(dir))
	if c, err := web.LoadOrCreateTLS(dir); err == nil {
		fmt.Fprintf(stdout, "dashboard certificate SHA-256: %s\n", web.Fingerprint(c.Certificate[0]))
	}
	return nil
}

// webStateDir is the state directory the daemon would use; nothing else of the
// configuration matters here, and nothing is made (no development token).
func webStateDir(src appliance.Source) (string, error) {
	dir := config.DefaultStateDir
	switch {
	case src.File != "":
		cfg, err := config.Load(src.File)
		if err != nil {
			return "", err
		}
		dir = cfg.StateDir
	case src.Dev:
		dir = "iot-hsm-dev"
	}
	if src.StateDir != "" {
		dir = src.StateDir
	}
	return dir, nil
}

// readNewPassword reads the password twice, without echo on a terminal.
func readNewPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	r := bufio.NewReader(stdin)
	restore := noEcho(stdin)
	defer restore()
	var lines [2]string
	for i, prompt := range []string{"New dashboard password: ", "Again: "} {
		fmt.Fprint(stderr, prompt)
		line, err := r.ReadString('\n')
		fmt.Fprintln(stderr)
		if err != nil && line == "" {
			return "", fmt.Errorf("web passwd: reading the password: %w", err)
		}
		lines[i] = strings.TrimRight(line, "\r\n")
	}
	if lines[0] != lines[1] {
		return "", web.ErrMismatch
	}
	return lines[0], nil
}

// noEcho turns the terminal's echo off while the password is typed; not a
// terminal (a pipe), nothing to do.
func noEcho(stdin io.Reader) (restore func()) {
	f, ok := stdin.(*os.File)
	if !ok {
		return func() {}
	}
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}
	}
	quiet := *old
	quiet.Lflag &^= unix.ECHO
	if unix.IoctlSetTermios(fd, unix.TCSETS, &quiet) != nil {
		return func() {}
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }
}
