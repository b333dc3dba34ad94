package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/iot-hsm/iot-hsm/audit"
)

const auditUsage = `usage: iot-hsm audit verify FILE

Checks an audit trail's hash chain offline, names the first broken link, and prints
the head (the last record's sequence number and hash) to compare with the head hash
that audit.tail shows or that an auditor kept.
`

// auditCmd checks an audit trail offline: `iot-hsm audit verify FILE`. It names the
// first broken link and exits non-zero when the chain does not hold.
func auditCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, auditUsage) }
	if len(args) == 0 || args[0] != "verify" {
		if len(args) > 0 && isHelp(args[0]) {
			fmt.Fprint(stdout, auditUsage)
			return nil
		}
		return usageError("usage: iot-hsm audit verify FILE")
	}
	if err := fs.Parse(args[1:]); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return usageError("")
	}
	if fs.NArg() != 1 {
		return usageError("usage: iot-hsm audit verify FILE")
	}
	path := fs.Arg(0)
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	head, n, err := audit.VerifyHead(f)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d records, chain intact\n", path, n)
	if n > 0 {
		fmt.Fprintf(stdout, "head: seq %d, hash %s\n", head.Seq, head.Hash)
	}
	return nil
}

func isHelp(s string) bool { return s == "-h" || s == "-help" || s == "--help" || s == "help" }

// usageError is a command line that cannot be run: exit status 2, as the console's.
// An empty message means the flag package already said what was wrong.
type usageError string

func (e usageError) Error() string { return string(e) }
