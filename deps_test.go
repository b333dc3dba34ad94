package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The daemon must not link test code: testing registers its flags and brings its
// runtime hooks into the binary. Both backend sets are checked.
func TestBinaryDoesNotLinkTesting(t *testing.T) {
	for _, tags := range []string{"", "nocloudkms"} {
		out, err := exec.Command("go", "list", "-deps", "-tags", tags, ".").CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps -tags %q: %v\n%s", tags, err, out)
		}
		for _, pkg := range strings.Fields(string(out)) {
			own := strings.HasPrefix(pkg, "github.com/iot-hsm/")
			if pkg == "testing" || strings.HasPrefix(pkg, "testing/") || (own && strings.HasSuffix(pkg, "test")) {
				t.Errorf("with tags %q the daemon links %s", tags, pkg)
			}
		}
	}
}
