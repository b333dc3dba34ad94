package vyubikey

import "encoding/binary"

// CCID messages (USB CCID 1.1, section 6) between the guest's driver and the card's
// reader, which is the YubiKey itself.
const (
	ccidPowerOn       = 0x62
	ccidPowerOff      = 0x63
	ccidGetSlotStatus = 0x65
	ccidXfrBlock      = 0x6F
	ccidGetParameters = 0x6C
	ccidResetParams   = 0x6D
	ccidSetParameters = 0x61

	ccidDataBlock  = 0x80
	ccidSlotStatus = 0x81
	ccidParameters = 0x82

	ccidActive   = 0x00 // bStatus: card present and powered
	ccidInactive = 0x01 // card present, not powered
	ccidFailed   = 0x40 // the command failed
)

// ccidT1Params: Fi/Di 1/1, LRC, no extra guard time, BWI 4 CWI 13, IFSC 254.
var ccidT1Params = []byte{0x11, 0x10, 0x00, 0x4D, 0x00, 0xFE, 0x00}

// ccid answers one CCID message from the guest.
func (u *usbRedir) ccid(msg []byte) []byte {
	slot, seq := msg[5], msg[6]
	reply := func(typ byte, status byte, param byte, data []byte) []byte {
		b := []byte{typ, 0, 0, 0, 0, slot, seq, status, 0, param}
		binary.LittleEndian.PutUint32(b[1:], uint32(len(data)))
		return append(b, data...)
	}
	icc := byte(ccidInactive)
	if u.powered {
		icc = ccidActive
	}
	switch msg[0] {
	case ccidPowerOn:
		u.powered = true
		u.c.mu.Lock()
		u.c.resetSession()
		u.c.mu.Unlock()
		return reply(ccidDataBlock, ccidActive, 0, ATR)
	case ccidPowerOff:
		u.powered = false
		return reply(ccidSlotStatus, ccidInactive, 0, nil)
	case ccidGetSlotStatus:
		return reply(ccidSlotStatus, icc, 0, nil)
	case ccidXfrBlock:
		if !u.powered {
			return reply(ccidDataBlock, ccidFailed|ccidInactive, 0, nil)
		}
		return reply(ccidDataBlock, ccidActive, 0, u.c.HandleAPDU(msg[10:]))
	case ccidGetParameters, ccidSetParameters, ccidResetParams:
		return reply(ccidParameters, icc, 1, ccidT1Params)
	}
	return reply(ccidSlotStatus, ccidFailed|icc, 0, nil)
}
