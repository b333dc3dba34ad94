package vyubikey

// Status words the card answers with (ISO/IEC 7816-4, NIST SP 800-73-4 part 2).
const (
	swOK                   uint16 = 0x9000
	swMoreData             uint16 = 0x6100 // | remaining (00 = 256 or more)
	swVerifyFail           uint16 = 0x63C0 // | retries left
	swMemoryFailure        uint16 = 0x6581
	swWrongLength          uint16 = 0x6700
	swLastCmdExpected      uint16 = 0x6883
	swSecurityNotSatisfied uint16 = 0x6982
	swAuthBlocked          uint16 = 0x6983
	swConditionsNotMet     uint16 = 0x6985
	swIncorrectData        uint16 = 0x6A80
	swFuncNotSupported     uint16 = 0x6A81
	swNotFound             uint16 = 0x6A82
	swNoSpace              uint16 = 0x6A84
	swIncorrectP1P2        uint16 = 0x6A86
	swRefNotFound          uint16 = 0x6A88
	swInsNotSupported      uint16 = 0x6D00
	swClaNotSupported      uint16 = 0x6E00
	swUnknown              uint16 = 0x6F00
)

// command is a parsed command APDU.
type command struct {
	cla, ins, p1, p2 byte
	data             []byte
	ne               int  // maximum response length the client accepts
	hasLe            bool // Le was present
	extended         bool // extended-length encoding
}

// parseCommand decodes the four ISO 7816-4 cases, short and extended.
func parseCommand(b []byte) (command, uint16) {
	var c command
	if len(b) < 4 {
		return c, swWrongLength
	}
	c.cla, c.ins, c.p1, c.p2 = b[0], b[1], b[2], b[3]
	body := b[4:]
	switch {
	case len(body) == 0: // case 1
		c.ne = 256
	case len(body) == 1: // case 2 short
		c.hasLe = true
		c.ne = int(body[0])
		if c.ne == 0 {
			c.ne = 256
		}
	case body[0] != 0: // case 3 / 4 short
		lc := int(body[0])
		switch len(body) {
		case 1 + lc:
			c.ne = 256
		case 2 + lc:
			c.hasLe = true
			c.ne = int(body[1+lc])
			if c.ne == 0 {
				c.ne = 256
			}
		default:
			return c, swWrongLength
		}
		c.data = body[1 : 1+lc]
	default: // extended: body[0] == 0
		c.extended = true
		if len(body) == 3 { // case 2 extended
			c.hasLe = true
			c.ne = int(body[1])<<8 | int(body[2])
			if c.ne == 0 {
				c.ne = 65536
			}
			break
		}
		if len(body) < 3 {
			return c, swWrongLength
		}
		lc := int(body[1])<<8 | int(body[2])
		if lc == 0 {
			return c, swWrongLength
		}
		switch len(body) {
		case 3 + lc:
			c.ne = 65536
		case 5 + lc:
			c.hasLe = true
			c.ne = int(body[3+lc])<<8 | int(body[4+lc])
			if c.ne == 0 {
				c.ne = 65536
			}
		default:
			return c, swWrongLength
		}
		c.data = body[3 : 3+lc]
	}
	return c, 0
}

// withSW appends a status word to response data.
func withSW(data []byte, sw uint16) []byte {
	out := make([]byte, 0, len(data)+2)
	out = append(out, data...)
	return append(out, byte(sw>>8), byte(sw))
}

// swBytes is a bare status word.
func swBytes(sw uint16) []byte { return []byte{byte(sw >> 8), byte(sw)} }

// retriesSW is 63Cx with the retry count capped at 15, as the card reports it.
func retriesSW(left int) uint16 {
	if left > 15 {
		left = 15
	}
	if left < 0 {
		left = 0
	}
	return swVerifyFail | uint16(left)
}
