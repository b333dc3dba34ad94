//go:build cgo

package hotplug

// This file is the whole cgo surface of the package: five pcsc-lite calls,
// wrapped just enough to keep C memory out of the rest of the code. The
// module proxy does not serve a PC/SC binding that exposes
// SCardGetStatusChange, and piv-go keeps its own private, so the package
// binds pcsc-lite itself.
//
// Threading: pcsc-lite allows SCardCancel to be called from another thread
// while SCardGetStatusChange blocks on the same context (that is its
// purpose). Every other call on a context is made from one goroutine at a
// time.

/*
#cgo pkg-config: libpcsclite
#include <stdlib.h>
#include <winscard.h>
*/
import "C"

import (
	"fmt"
	"time"
	"unsafe"
)

func init() { scardOpen = cgoOpen }

// scardError is a pcsc-lite return code other than SCARD_S_SUCCESS.
type scardError int64

func (e scardError) Error() string {
	return fmt.Sprintf("pcsc: %s (0x%08X)", C.GoString(C.pcsc_stringify_error(C.LONG(e))), uint32(e))
}

func check(rv C.LONG) error {
	if rv == C.SCARD_S_SUCCESS {
		return nil
	}
	return scardError(rv)
}

// cgoContext is one SCARDCONTEXT, i.e. one connection to pcscd.
type cgoContext struct{ h C.SCARDCONTEXT }

// cgoOpen calls SCardEstablishContext. It fails with SCARD_E_NO_SERVICE
// when pcscd is not running.
func cgoOpen() (scardConn, error) {
	var h C.SCARDCONTEXT
	if err := check(C.SCardEstablishContext(C.SCARD_SCOPE_SYSTEM, nil, nil, &h)); err != nil {
		return nil, err
	}
	return &cgoContext{h: h}, nil
}

// listReaders calls SCardListReaders; no reader is an empty list, not an
// error.
func (c *cgoContext) listReaders() ([]string, error) {
	// A reader can appear between the size query and the fetch; the second
	// call then reports SCARD_E_INSUFFICIENT_BUFFER and we ask again.
	for range 5 {
		var n C.DWORD
		rv := C.SCardListReaders(c.h, nil, nil, &n)
		if rv == C.SCARD_E_NO_READERS_AVAILABLE {
			return nil, nil
		}
		if err := check(rv); err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		rv = C.SCardListReaders(c.h, nil, (*C.char)(unsafe.Pointer(&buf[0])), &n)
		switch rv {
		case C.SCARD_E_INSUFFICIENT_BUFFER:
			continue
		case C.SCARD_E_NO_READERS_AVAILABLE:
			return nil, nil
		}
		if err := check(rv); err != nil {
			return nil, err
		}
		return splitMultiString(buf[:n]), nil
	}
	return nil, fmt.Errorf("pcsc: reader list kept changing")
}

// getStatusChange calls SCardGetStatusChange: it returns when a state
// differs from states[i].current, after cancel, or with errTimeout after
// timeout.
// The reader states live in C memory for the call because the struct holds
// a pointer (the reader name) that C dereferences.
func (c *cgoContext) getStatusChange(states []readerState, timeout time.Duration) error {
	n := len(states)
	if n == 0 {
		return fmt.Errorf("pcsc: no reader states")
	}
	arr := (*C.SCARD_READERSTATE)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof(C.SCARD_READERSTATE{}))))
	if arr == nil {
		return fmt.Errorf("pcsc: out of memory")
	}
	defer C.free(unsafe.Pointer(arr))
	rs := unsafe.Slice(arr, n)
	for i := range states {
		name := C.CString(states[i].name)
		defer C.free(unsafe.Pointer(name))
		rs[i].szReader = name
		rs[i].dwCurrentState = C.DWORD(states[i].current)
	}
	rv := C.SCardGetStatusChange(c.h, C.DWORD(timeout.Milliseconds()), arr, C.DWORD(n))
	switch rv {
	case C.SCARD_E_UNKNOWN_READER:
		return errUnknownReader
	case C.SCARD_E_TIMEOUT:
		return errTimeout
	}
	if err := check(rv); err != nil {
		return err
	}
	for i := range states {
		states[i].event = uint32(rs[i].dwEventState)
	}
	return nil
}

// cancel calls SCardCancel. pcsc-lite makes it a no-op when no
// SCardGetStatusChange is blocked, so callers repeat it until the blocked
// call has returned.
func (c *cgoContext) cancel() { C.SCardCancel(c.h) }

// release calls SCardReleaseContext.
func (c *cgoContext) release() { C.SCardReleaseContext(c.h) }
