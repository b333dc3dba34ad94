package vyubikey

// t1 is the card's side of the ISO 7816-3 T=1 block protocol. QEMU's usb-ccid is a
// TPDU-level reader: the guest's CCID driver frames each APDU in T=1 blocks (the
// protocol the YubiKey's ATR offers and piv-go asks for), and QEMU hands every block
// to the card unchanged, as if it were an APDU.
type t1 struct {
	ifsd int    // the largest information field the host takes: 32 until it says
	ns   byte   // N(S) of the next I-block the card sends
	cmd  []byte // a chained command so far
	resp []byte // response bytes not yet sent
	last []byte // information field of the last I-block sent, for a retransmission
	more bool   // whether that block had the more-data bit
}

const (
	t1DefaultIFSD = 32 // ISO 7816-3's default IFSD
	t1MaxINF      = 254

	pcbR       = 0x80 // R-block; bit 4 is N(R), bits 0-1 an error
	pcbS       = 0xC0 // S-block; bit 5 marks a response
	pcbMore    = 0x20 // I-block: more data follows (chaining)
	pcbSResp   = 0x20
	pcbRError  = 0x02 // R-block: "other error"
	pcbREDC    = 0x01 // R-block: wrong checksum
	sResynch   = 0x00
	sIFS       = 0x01
	sAbort     = 0x02
	t1Overhead = 4 // NAD, PCB, LEN and the LRC
)

func newT1() *t1 { return &t1{ifsd: t1DefaultIFSD} }

// block takes one block from the host and returns the card's block; apdu answers
// a complete command APDU.
func (t *t1) block(in []byte, apdu func([]byte) []byte) []byte {
	if len(in) < t1Overhead || len(in) != t1Overhead+int(in[2]) || lrc(in) != 0 {
		return t.rBlock(t.ns, pcbREDC)
	}
	pcb, inf := in[1], in[3:len(in)-1]
	switch {
	case pcb&0x80 == 0:
		return t.iBlock(pcb, inf, apdu)
	case pcb&0xC0 == pcbR:
		return t.retransmit(pcb>>4&1, pcb&0x03 != 0)
	case pcb&pcbSResp != 0:
		return t.rBlock(t.ns, pcbRError) // a response to a request the card never made
	}
	switch pcb & 0x1F {
	case sResynch:
		*t = t1{ifsd: t.ifsd}
	case sIFS:
		if len(inf) == 1 && inf[0] > 0 && inf[0] < 0xFF {
			t.ifsd = int(inf[0])
		}
	case sAbort:
		t.cmd, t.resp = nil, nil
	}
	return frame(pcb|pcbSResp, inf)
}

// iBlock takes part of a command: an R-block asks for the next part, the last part
// runs the command and starts the response.
func (t *t1) iBlock(pcb byte, inf []byte, apdu func([]byte) []byte) []byte {
	t.cmd = append(t.cmd, inf...)
	if pcb&pcbMore != 0 {
		return t.rBlock(pcb>>6&1^1, 0)
	}
	cmd := t.cmd
	t.cmd = nil
	t.resp = apdu(cmd)
	return t.nextI()
}

// nextI sends the next part of the response.
func (t *t1) nextI() []byte {
	n := min(len(t.resp), t.ifsd, t1MaxINF)
	t.last, t.resp = t.resp[:n], t.resp[n:]
	t.more = len(t.resp) > 0
	return t.sendI(t.ns)
}

func (t *t1) sendI(ns byte) []byte {
	pcb := ns << 6
	if t.more {
		pcb |= pcbMore
	}
	t.ns = ns ^ 1
	return frame(pcb, t.last)
}

// retransmit answers an R-block: the next part of a chained response when the host
// acknowledges the last one, otherwise the last block again, numbered as the host
// expects (its counters start again at 0 whenever the guest resets the card, which
// the card behind QEMU is not told).
func (t *t1) retransmit(nr byte, failed bool) []byte {
	if !failed && nr == t.ns && t.more {
		return t.nextI()
	}
	if t.last == nil && !t.more {
		return t.rBlock(t.ns, pcbRError)
	}
	return t.sendI(nr)
}

func (t *t1) rBlock(nr, errBits byte) []byte { return frame(pcbR|nr<<4|errBits, nil) }

// frame is a block from the card: NAD 0, PCB, LEN, the information field, LRC.
func frame(pcb byte, inf []byte) []byte {
	b := append([]byte{0, pcb, byte(len(inf))}, inf...)
	return append(b, lrc(b))
}

func lrc(b []byte) byte {
	var x byte
	for _, c := range b {
		x ^= c
	}
	return x
}
