// Command iot-hsm is the HSM appliance for PKI: it keeps CA keys in hardware tokens,
// provisions CA certificates for them and signs what the PKI asks for.
//
//	iot-hsm run --config /etc/iot-hsm/config.toml   the daemon
//	iot-hsm run --dev [--state-dir DIR]              the daemon on a SoftHSM2 lab token
//	iot-hsm console ...                              the operator's MQTT console
//	iot-hsm audit verify FILE                        check an audit trail offline
//	iot-hsm web passwd --config FILE                 set the web dashboard's password
//	iot-hsm version
package main

import (
	"errors"
	"fmt"
	"os"
)

const usage = `usage: iot-hsm <command> [flags]

commands:
  run       run the appliance daemon (run -h for flags)
  console   the operator's MQTT console
  audit     audit verify FILE: check an audit trail's hash chain offline
  web       web passwd: set the web dashboard's password
  version   print the version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "run":
		err = runCmd(args)
	case "console":
		err = consoleCmd(args)
	case "audit":
		err = auditCmd(args, os.Stdout, os.Stderr)
	case "web":
		err = webCmd(args, os.Stdin, os.Stdout, os.Stderr)
	case "version", "--version", "-version":
		fmt.Println("iot-hsm", version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "iot-hsm: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	var ue usageError
	if errors.As(err, &ue) {
		if ue != "" {
			fmt.Fprintln(os.Stderr, ue)
		}
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "iot-hsm:", err)
		os.Exit(1)
	}
}
