package main

import (
	"os"

	"github.com/iot-hsm/iot-hsm/console"
)

// consoleCmd is the operator's MQTT console (package console).
func consoleCmd(args []string) error {
	if code := console.Run(args, os.Stdin, os.Stdout, os.Stderr); code != 0 {
		os.Exit(code)
	}
	return nil
}
