package ota

import (
	"fmt"
	"sort"
	"strings"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// Health is what an updated daemon must show again before it is committed: its
// configuration loaded, the HSMs that were present before the update present again,
// the slots that were connected connected again, and the broker session up.
type Health struct {
	ConfigLoaded   bool     `json:"config_loaded"`
	HSMsPresent    []string `json:"hsms_present"`
	SlotsConnected []string `json:"slots_connected"`
	BrokerUp       bool     `json:"broker_up"`
}

// testHealth, set only by test builds (-ldflags -X
// github.com/iot-hsm/iot-hsm/ota.testHealth=never), makes a build that never
// becomes healthy, so the rollback path can be exercised with real processes.
var testHealth string

// HealthOf reads a status document.
func HealthOf(st protocol.Status, configLoaded bool) Health {
	h := Health{ConfigLoaded: configLoaded, BrokerUp: st.Broker == "connected",
		HSMsPresent: []string{}, SlotsConnected: []string{}}
	for _, x := range st.HSMs {
		if x.Present {
			h.HSMsPresent = append(h.HSMsPresent, x.ID)
		}
	}
	for _, s := range st.Slots {
		if s.Connected {
			h.SlotsConnected = append(h.SlotsConnected, s.SlotID)
		}
	}
	sort.Strings(h.HSMsPresent)
	sort.Strings(h.SlotsConnected)
	if testHealth == "never" {
		h.ConfigLoaded = false
	}
	return h
}

// Meets reports what now lacks against the baseline taken before the update; nil
// when the daemon is as healthy as it was. The broker must be up whatever it was:
// an update that cannot be reached again cannot be managed again.
func (now Health) Meets(baseline Health) error {
	var missing []string
	if !now.ConfigLoaded {
		missing = append(missing, "configuration not loaded")
	}
	if !now.BrokerUp {
		missing = append(missing, "broker session down")
	}
	if m := minus(baseline.HSMsPresent, now.HSMsPresent); len(m) > 0 {
		missing = append(missing, "HSMs absent: "+strings.Join(m, ", "))
	}
	if m := minus(baseline.SlotsConnected, now.SlotsConnected); len(m) > 0 {
		missing = append(missing, "slots not connected: "+strings.Join(m, ", "))
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("not healthy: %s", strings.Join(missing, "; "))
}

func minus(a, b []string) []string {
	have := map[string]bool{}
	for _, x := range b {
		have[x] = true
	}
	var out []string
	for _, x := range a {
		if !have[x] {
			out = append(out, x)
		}
	}
	return out
}
