package main

import "runtime/debug"

// version is set at build time (-ldflags "-X main.version=..."); otherwise it comes
// from the module's build information.
var version = ""

func init() {
	if version != "" {
		return
	}
	version = "devel"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		version = bi.Main.Version
	}
}
