package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/iot-hsm/iot-hsm/audit"
)

// auditCmd checks an audit trail offline: `iot-hsm audit verify FILE`. It names the
// first broken link and exits non-zero when the chain does not hold.
func auditCmd(args []string) error {
	if len(args) != 2 || args[0] != "verify" {
		return errors.New("usage: iot-hsm audit verify FILE")
	}
	f, err := os.Open(args[1])
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := audit.Verify(f)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %d records, chain intact\n", args[1], n)
	return nil
}
