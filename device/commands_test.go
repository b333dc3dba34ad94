package device

import (
	"testing"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// Every command of the protocol has one entry in the command table, and a command
// that stores an intent is one the audit trail records: recovery settles an intent
// by writing its audit record.
func TestCommandTable(t *testing.T) {
	for _, cmd := range protocol.Commands {
		c, ok := commands[cmd]
		if !ok || c.route == nil {
			t.Errorf("%s has no entry in the command table", cmd)
			continue
		}
		if c.journaled && !c.audited {
			t.Errorf("%s is journaled but not audited", cmd)
		}
	}
	if len(commands) != len(protocol.Commands) {
		t.Errorf("the command table has %d entries, the protocol %d commands", len(commands), len(protocol.Commands))
	}
}
