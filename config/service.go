package config

import (
	"fmt"
	"time"
)

// Service tunes the daemon's life under systemd (or any supervisor): how long start-up
// waits for the broker, how long shutdown waits for requests, and when a token worker
// counts as wedged.
type Service struct {
	// BrokerWait bounds the first broker connection attempt before the daemon reports
	// READY=1. A broker that is still down after it does not hold the service in
	// "activating": the daemon says so in its status and keeps retrying.
	BrokerWait time.Duration `toml:"broker_wait"`
	// StopTimeout bounds how long a shutdown (SIGTERM, restart) waits for requests
	// that are queued or running; what is left after it is answered hsm_offline.
	StopTimeout time.Duration `toml:"stop_timeout"`
	// HungGrace is how long a token call may overrun its own request deadline before
	// its worker counts as wedged: the watchdog pings stop, so systemd restarts the
	// daemon. Token calls cannot be interrupted, so a deadline alone frees nothing.
	HungGrace time.Duration `toml:"hung_grace"`
}

// Service defaults. StopTimeout stays well inside the unit's TimeoutStopSec (30s), so
// the daemon disconnects cleanly before systemd would kill it.
const (
	DefaultBrokerWait  = 10 * time.Second
	DefaultStopTimeout = 10 * time.Second
	DefaultHungGrace   = 30 * time.Second
)

func (s *Service) applyDefaults() {
	if s.BrokerWait == 0 {
		s.BrokerWait = DefaultBrokerWait
	}
	if s.StopTimeout == 0 {
		s.StopTimeout = DefaultStopTimeout
	}
	if s.HungGrace == 0 {
		s.HungGrace = DefaultHungGrace
	}
}

func (s *Service) check() error {
	for _, d := range []struct {
		name     string
		v        time.Duration
		min, max time.Duration
	}{
		{"broker_wait", s.BrokerWait, 100 * time.Millisecond, 5 * time.Minute},
		{"stop_timeout", s.StopTimeout, 100 * time.Millisecond, 5 * time.Minute},
		{"hung_grace", s.HungGrace, 100 * time.Millisecond, time.Hour},
	} {
		if d.v < d.min || d.v > d.max {
			return fmt.Errorf("%w: service.%s %v (want %v..%v)", ErrInvalid, d.name, d.v, d.min, d.max)
		}
	}
	return nil
}
