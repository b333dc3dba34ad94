//go:build race

package daemontest

// raceEnabled builds the daemon with the race detector when the tests run with it.
const raceEnabled = true
