package vyubikey

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Application identifiers.
var (
	aidPIV        = []byte{0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00}
	aidManagement = []byte{0xA0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17}
	aidOTP        = []byte{0xA0, 0x00, 0x00, 0x05, 0x27, 0x20, 0x01}
)

// USB capability bits of the management application's device info.
const (
	capOTP     = 0x0001
	capU2F     = 0x0002
	capOpenPGP = 0x0008
	capPIV     = 0x0010
	capOATH    = 0x0020
	capFIDO2   = 0x0200
)

// selectApp is SELECT by DF name (P1 04). A name matches an application when it
// is a prefix of the application's AID at least as long as the RID plus one
// byte, or the AID followed by a version byte (piv-go selects the OTP
// application as A0 00 00 05 27 20 01 01).
func (c *Card) selectApp(cmd command) ([]byte, uint16) {
	if cmd.p1 != 0x04 {
		return nil, swIncorrectP1P2
	}
	name := cmd.data
	matches := func(aid []byte, min int) bool {
		if len(name) < min {
			return false
		}
		if len(name) <= len(aid) {
			return bytes.HasPrefix(aid, name)
		}
		return bytes.HasPrefix(name, aid) && len(name) <= len(aid)+1
	}
	switch {
	case matches(aidPIV, 5):
		c.deselect()
		c.sess.app = appPIV
		// Application property template: PIX of the AID and the coexistent tag
		// allocation authority (NIST SP 800-73-4 part 2, 3.1.1).
		apt := tlv(0x61,
			tlv(0x4F, aidPIV[5:]),
			tlv(0x79, tlv(0x4F, aidPIV[:5])))
		return apt, swOK
	case matches(aidManagement, len(aidManagement)):
		c.deselect()
		c.sess.app = appManagement
		v := c.st.Version
		return []byte(fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2])), swOK
	case matches(aidOTP, len(aidOTP)):
		c.deselect()
		c.sess.app = appOTP
		return c.otpStatus(), swOK
	}
	// An unknown application: not found, the current one stays selected.
	return nil, swNotFound
}

// deselect drops PIV's security state (PIN and management key verification,
// pending challenges), as leaving or reselecting the application does.
func (c *Card) deselect() {
	c.sess = session{app: appNone}
}

// management is the subset of the YubiKey management application clients use
// to identify a key: READ CONFIG (device info).
func (c *Card) management(cmd command) ([]byte, uint16) {
	switch cmd.ins {
	case 0x1D: // READ CONFIG
		if cmd.p1 != 0 {
			// Only page 0 exists.
			return []byte{0x00}, swOK
		}
		return c.deviceInfo(), swOK
	}
	return nil, swInsNotSupported
}

// deviceInfo is the DeviceInfo structure: one length byte, then TLVs.
func (c *Card) deviceInfo() []byte {
	st := c.st
	u16 := func(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }
	serial := make([]byte, 4)
	binary.BigEndian.PutUint32(serial, st.Serial)
	var b []byte
	// Supported: what a YubiKey 5 has; enabled: only PIV, the one implemented.
	b = append(b, tlv(0x01, u16(capOTP|capU2F|capOpenPGP|capPIV|capOATH|capFIDO2))...)
	b = append(b, tlv(0x02, serial)...)
	b = append(b, tlv(0x03, u16(capPIV))...)
	b = append(b, tlv(0x04, []byte{st.FormFactor})...)
	b = append(b, tlv(0x05, st.Version[:])...)
	b = append(b, tlv(0x06, u16(0))...)       // auto-eject timeout
	b = append(b, tlv(0x07, []byte{0x0F})...) // challenge-response timeout
	b = append(b, tlv(0x08, []byte{0x00})...) // device flags
	b = append(b, tlv(0x0A, []byte{0x00})...) // configuration not locked
	return append([]byte{byte(len(b))}, b...)
}

// otpStatus is the OTP application's status: firmware version, programming
// sequence (0: no slot programmed), touch level.
func (c *Card) otpStatus() []byte {
	v := c.st.Version
	return []byte{v[0], v[1], v[2], 0x00, 0x00, 0x00}
}

// otp answers the OTP application's serial number request (INS 01, P1 10), the
// way YubiKey 4 era clients read the serial, and its status (P1 03).
func (c *Card) otp(cmd command) ([]byte, uint16) {
	if cmd.ins != 0x01 {
		return nil, swInsNotSupported
	}
	switch cmd.p1 {
	case 0x10:
		serial := make([]byte, 4)
		binary.BigEndian.PutUint32(serial, c.st.Serial)
		return serial, swOK
	case 0x03:
		return c.otpStatus(), swOK
	}
	return nil, swIncorrectP1P2
}
