package hotplug

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const (
	// kernelGroup is the multicast group the kernel sends uevents to;
	// udevd re-sends processed events to group 2, which we do not want.
	kernelGroup = 1
	// ueventRcvBuf is the socket buffer asked for: a USB hub full of devices
	// produces hundreds of events in a burst, and the default (~200 KiB)
	// overflows while the consumer is busy rescanning.
	ueventRcvBuf = 8 << 20
	// A uevent is at most a few KiB (the kernel's env buffer is 2 KiB plus
	// the header); this leaves room.
	ueventMaxMsg = 64 << 10
)

// ListenUEvents receives kernel uevents on a NETLINK_KOBJECT_UEVENT socket
// joined to the kernel's multicast group. Malformed messages and messages
// not sent by the kernel are skipped; when the kernel reports that events
// were dropped, a UEvent with Action ActionOverflow is sent. The channel is
// closed when ctx ends (or, unexpectedly, when the socket fails).
func ListenUEvents(ctx context.Context) (<-chan UEvent, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	// SO_RCVBUFFORCE goes past net.core.rmem_max but needs CAP_NET_ADMIN;
	// without it we still get what rmem_max allows.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ueventRcvBuf); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, ueventRcvBuf)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: kernelGroup}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uevent bind: %w", err)
	}
	// Through os.File the socket is served by the runtime poller, so
	// closing the file wakes a pending read: that is how ctx stops us.
	f := os.NewFile(uintptr(fd), "netlink-uevent")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	ch := make(chan UEvent, 64)
	stop := context.AfterFunc(ctx, func() { f.Close() })
	go func() {
		defer close(ch)
		defer stop()
		defer f.Close()
		buf := make([]byte, ueventMaxMsg)
		for {
			var (
				n    int
				from unix.Sockaddr
				rerr error
			)
			err := rc.Read(func(fd uintptr) bool {
				n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
				return !errors.Is(rerr, unix.EAGAIN)
			})
			if err != nil {
				return // closed: ctx ended
			}
			var ev UEvent
			switch {
			case errors.Is(rerr, unix.ENOBUFS):
				ev = UEvent{Action: ActionOverflow}
			case errors.Is(rerr, unix.EINTR):
				continue
			case rerr != nil:
				return
			default:
				// Only the kernel (port id 0) sends genuine events;
				// anything else on the group is ignored.
				if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
					continue
				}
				ev, err = ParseUEvent(buf[:n])
				if err != nil {
					continue
				}
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}
