package yubikey

import (
	"os"
	"strconv"
	"syscall"
)

// pcscdSocket is where libpcsclite connects to pcscd: PCSCLITE_CSOCK_NAME, as the
// library reads it, or the path it is built with.
func pcscdSocket() string {
	if s := os.Getenv("PCSCLITE_CSOCK_NAME"); s != "" {
		return s
	}
	return "/run/pcscd/pcscd.comm"
}

// pcscdConns lists the process's connections to pcscd: socket inode by descriptor.
// The inode tells a new connection from an old one that reused a descriptor.
func pcscdConns() map[int]uint64 {
	conns := map[int]uint64{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return conns
	}
	sock := pcscdSocket()
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := syscall.Getpeername(fd)
		if u, ok := sa.(*syscall.SockaddrUnix); err != nil || !ok || u.Name != sock {
			continue
		}
		var st syscall.Stat_t
		if syscall.Fstat(fd, &st) == nil {
			conns[fd] = st.Ino
		}
	}
	return conns
}

// endConn closes (or only shuts down) descriptor fd if it is still socket ino.
func endConn(fd int, ino uint64, close bool) {
	var st syscall.Stat_t
	if syscall.Fstat(fd, &st) != nil || st.Ino != ino {
		return
	}
	if close {
		syscall.Close(fd)
	} else {
		syscall.Shutdown(fd, syscall.SHUT_RDWR)
	}
}
