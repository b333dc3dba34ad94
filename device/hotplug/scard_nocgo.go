//go:build !cgo

package hotplug

// Without cgo there is no pcsc-lite client: scardOpen stays nil and
// WatchPCSC reports errNoPCSC, so a Watcher falls back to uevents and the
// periodic rescan.
