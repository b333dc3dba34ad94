package main

import "runtime/debug"

// version is set at build time (-ldflags "-X main.version=..."); otherwise it comes
// from the module's build information: the module version of a `go install`, or the
// VCS revision a plain `go build` in a checkout records.
var version = ""

func init() {
	if version != "" {
		return
	}
	bi, ok := debug.ReadBuildInfo()
	version = versionOf(bi, ok)
}

func versionOf(bi *debug.BuildInfo, ok bool) string {
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified {
		rev += "-dirty"
	}
	return "devel-" + rev
}
