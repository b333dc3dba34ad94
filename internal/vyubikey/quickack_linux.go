package vyubikey

import (
	"net"
	"syscall"
)

// quickAcker returns a function that puts the socket in quick-ACK mode.
//
// vpcd (vsmartcard 3.3) sends a message's 2-byte length and its body in two
// send calls on a socket with Nagle's algorithm on: the body waits until the
// length is acknowledged, and a delayed ACK costs about 40 ms per APDU. Linux
// leaves quick-ACK mode by itself, so it is set again before every read.
func quickAcker(conn net.Conn) func() {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return func() {}
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return func() {}
	}
	return func() {
		rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
		})
	}
}
