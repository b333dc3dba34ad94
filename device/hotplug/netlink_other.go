//go:build !linux

package hotplug

import (
	"context"
	"errors"
)

// ListenUEvents needs Linux's NETLINK_KOBJECT_UEVENT; elsewhere the Watcher
// relies on PC/SC and the periodic rescan.
func ListenUEvents(ctx context.Context) (<-chan UEvent, error) {
	return nil, errors.New("uevent: kernel uevents are Linux only")
}
