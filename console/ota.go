package console

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// cmdOTAUpdate starts an update and follows it with a progress bar until it is
// committed, rolled back or refused (--wait=false returns once it started).
func (s *session) cmdOTAUpdate(args []string) error {
	fs, rf := s.requestFlags(protocol.CmdOTAUpdate, "--url URL --sha256 HEX --size BYTES [--signature FILE.minisig] [--allow-downgrade]")
	var a protocol.OTAUpdateArgs
	var sigFile string
	var wait bool
	var waitFor time.Duration
	fs.StringVar(&a.URL, "url", "", "where the device downloads the update (binary or RAUC bundle)")
	fs.StringVar(&a.SHA256, "sha256", "", "the update's SHA-256, hex")
	fs.Int64Var(&a.Size, "size", 0, "the update's size in bytes")
	fs.StringVar(&sigFile, "signature", "", "the detached minisign signature (`FILE`.minisig); required in binary mode")
	fs.BoolVar(&a.AllowDowngrade, "allow-downgrade", false, "install a version older than the running one (never below the appliance's minimum); needs --sign-key")
	fs.BoolVar(&wait, "wait", true, "follow the update until it is committed, rolled back or refused")
	fs.DurationVar(&waitFor, "wait-timeout", 15*time.Minute, "how long to follow it")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if a.URL == "" || a.SHA256 == "" || a.Size <= 0 {
		return usagef("--url, --sha256 and --size are required")
	}
	if sigFile != "" {
		sig, err := s.readInput("signature", sigFile)
		if err != nil {
			return err
		}
		a.Signature = string(sig)
	}
	reply, err := s.call(protocol.CmdOTAUpdate, "", rf, a)
	if err != nil || s.opts.json || !wait {
		return err
	}
	var st protocol.OTAStatus
	if err := result(reply, &st); err != nil {
		return err
	}
	return s.followOTA(st, waitFor)
}

func (s *session) cmdOTAStatus(args []string) error {
	fs, rf := s.requestFlags(protocol.CmdOTAStatus, "")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	reply, err := s.call(protocol.CmdOTAStatus, "", rf, nil)
	if err != nil || s.opts.json {
		return err
	}
	var st protocol.OTAStatus
	if err := result(reply, &st); err != nil {
		return err
	}
	printOTA(s.stdout, st)
	fmt.Fprintln(s.stdout)
	return nil
}

// followOTA polls ota.status once a second, through the daemon's restart or the
// appliance's reboot (no reply for a while is expected then).
func (s *session) followOTA(st protocol.OTAStatus, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	restarted := false
	for {
		printOTA(s.stdout, st)
		switch st.Phase {
		case protocol.OTACommitted, protocol.OTARolledBack, protocol.OTAFailed:
			if restarted || st.Phase == protocol.OTAFailed {
				fmt.Fprintln(s.stdout)
				if st.Phase != protocol.OTACommitted {
					return fmt.Errorf("update %s: %s", st.Phase, st.Error)
				}
				return nil
			}
		case protocol.OTAReboot, protocol.OTATrial:
			restarted = true
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(s.stdout)
			return unreachablef("the update is still in phase %s after %s", st.Phase, limit)
		}
		time.Sleep(time.Second)
		reply, _, err := s.request(protocol.CmdOTAStatus, "", &requestFlags{}, nil)
		if err != nil || !reply.OK {
			continue // restarting or rebooting
		}
		var next protocol.OTAStatus
		if result(reply, &next) == nil {
			st = next
		}
	}
}

// printOTA draws one line: "\r[#####.....]  42% download  message".
func printOTA(w io.Writer, st protocol.OTAStatus) {
	const width = 30
	pct := min(max(st.Percent, 0), 100)
	done := width * pct / 100
	msg := st.Message
	if st.Error != "" {
		msg = st.Error
	}
	if len(msg) > 60 {
		msg = msg[:57] + "..."
	}
	fmt.Fprintf(w, "\r[%s%s] %3d%% %-11s %s (running %s)\x1b[K", strings.Repeat("#", done), strings.Repeat(".", width-done),
		pct, st.Phase, msg, st.Version)
}
