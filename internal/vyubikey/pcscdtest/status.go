package pcscdtest

/*
#cgo linux pkg-config: libpcsclite
#include <winscard.h>
#include <string.h>
#include <stdlib.h>

// reader_state asks pcscd for a reader's state without connecting to the card.
static LONG reader_state(const char *reader, DWORD *state) {
	SCARDCONTEXT ctx;
	SCARD_READERSTATE rs;
	LONG rc = SCardEstablishContext(SCARD_SCOPE_SYSTEM, NULL, NULL, &ctx);
	if (rc != SCARD_S_SUCCESS) {
		return rc;
	}
	memset(&rs, 0, sizeof rs);
	rs.szReader = reader;
	rs.dwCurrentState = SCARD_STATE_UNAWARE;
	rc = SCardGetStatusChange(ctx, 0, &rs, 1);
	SCardReleaseContext(ctx);
	*state = rs.dwEventState;
	return rc;
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// ReaderState is what pcscd says about a reader.
type ReaderState struct {
	Present   bool // a card is in the reader
	Mute      bool // the card does not answer (no ATR)
	Exclusive bool // a client holds it exclusively
	InUse     bool // a client is connected
}

// State reads a reader's state (SCardGetStatusChange); it never connects to
// the card, so it cannot disturb or block it.
func State(reader string) (ReaderState, error) {
	cs := C.CString(reader)
	defer C.free(unsafe.Pointer(cs))
	var st C.DWORD
	if rc := C.reader_state(cs, &st); rc != C.SCARD_S_SUCCESS {
		return ReaderState{}, fmt.Errorf("SCardGetStatusChange(%q): rc %#x", reader, uint32(rc))
	}
	return ReaderState{
		Present:   st&C.SCARD_STATE_PRESENT != 0,
		Mute:      st&C.SCARD_STATE_MUTE != 0,
		Exclusive: st&C.SCARD_STATE_EXCLUSIVE != 0,
		InUse:     st&C.SCARD_STATE_INUSE != 0,
	}, nil
}
