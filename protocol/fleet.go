package protocol

import (
	"strings"
	"time"
)

// The fleet topics live under a CA topic: every appliance serving the CA publishes
// its claims there and reads everyone's (fleet.md).

// CAFleetFilter matches the claims and the epoch of a CA key.
func (t Topics) CAFleetFilter(caID string) string { return t.Root + "/ca/" + caID + "/fleet/#" }

// CAEpoch is the retained marker of the broker state the claims of a CA live in.
func (t Topics) CAEpoch(caID string) string { return t.Root + "/ca/" + caID + "/fleet/epoch" }

// CAClaim is the retained claim of member on request id for a CA key.
func (t Topics) CAClaim(caID, member, id string) string {
	return t.Root + "/ca/" + caID + "/fleet/claim/" + member + "/" + id
}

// ParseCAFleetTopic splits a fleet topic: kind is "epoch" or "claim"; member and id
// are set for a claim.
func (t Topics) ParseCAFleetTopic(topic string) (caID, kind, member, id string, ok bool) {
	rest, ok := strings.CutPrefix(topic, t.Root+"/ca/")
	if !ok {
		return "", "", "", "", false
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 3 && parts[1] == "fleet" && parts[2] == "epoch":
		return parts[0], "epoch", "", "", parts[0] != ""
	case len(parts) == 5 && parts[1] == "fleet" && parts[2] == "claim":
		return parts[0], "claim", parts[3], parts[4], parts[0] != "" && parts[3] != "" && parts[4] != ""
	}
	return "", "", "", "", false
}

// Claim is what a member publishes, retained, before it signs a request taken from a
// CA topic. Nonce tells the member's latest claim from an older copy of it.
type Claim struct {
	ExpiresAt time.Time `json:"expires_at"`
	Nonce     string    `json:"nonce"`
}

// Epoch is the retained marker of a broker state holding a CA's claims. Lost says the
// claims made before Since were lost (a broker restarted without its state). A
// message with Sync set and nothing else is a member's probe, never retained.
type Epoch struct {
	Since time.Time `json:"since,omitzero"`
	Lost  bool      `json:"lost,omitempty"`
	Sync  string    `json:"sync,omitempty"`
}
