package device

import (
	"os"
	"regexp"
	"testing"
)

// The command table and the MQTT contract agree: every command docs/protocol.md
// documents has one entry, and nothing else does. A command that stores an intent
// is one the audit trail records: recovery settles an intent by writing its audit
// record.
func TestCommandTable(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^### `([a-z_.]+)`$").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}
	if len(documented) < 10 {
		t.Fatalf("only %d commands found in docs/protocol.md", len(documented))
	}
	for cmd := range documented {
		c, ok := commands[cmd]
		if !ok || c.route == nil {
			t.Errorf("%s is documented but has no entry in the command table", cmd)
			continue
		}
		if c.journaled && !c.audited {
			t.Errorf("%s is journaled but not audited", cmd)
		}
	}
	for cmd := range commands {
		if !documented[cmd] {
			t.Errorf("%s is in the command table but not documented in docs/protocol.md", cmd)
		}
	}
}
