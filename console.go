package main

import "errors"

// consoleCmd is the operator's MQTT console. It arrives with the MQTT command API;
// until then it says so instead of pretending.
func consoleCmd(args []string) error {
	return errors.New("console: not available yet: the MQTT command API is not part of this build")
}
