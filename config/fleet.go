package config

import (
	"fmt"
	"time"
)

// Fleet tunes what the appliances serving one CA topic agree on (docs/fleet.md).
type Fleet struct {
	// Enabled makes the appliance a member of a fleet on every CA topic it serves:
	// each request there is claimed before it is signed, must carry expires_at within
	// ClaimWindow, and arrives on a session of its own. Every appliance holding the
	// same CA key must have it on.
	Enabled bool `toml:"enabled"`
	// ClaimWindow is how far ahead a request on a CA topic may expire: it bounds how
	// long a claim must be remembered, and how long signing on a CA topic pauses after
	// the broker lost the claims (restarted without its state).
	ClaimWindow time.Duration `toml:"claim_window"`
}

// DefaultClaimWindow is the default fleet.claim_window.
const DefaultClaimWindow = 10 * time.Minute

func (f *Fleet) applyDefaults() {
	if f.ClaimWindow == 0 {
		f.ClaimWindow = DefaultClaimWindow
	}
}

func (f *Fleet) check() error {
	if f.ClaimWindow < 5*time.Second || f.ClaimWindow > time.Hour {
		return fmt.Errorf("%w: fleet.claim_window %v (want 5s..1h)", ErrInvalid, f.ClaimWindow)
	}
	return nil
}
