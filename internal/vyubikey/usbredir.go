package vyubikey

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
)

// The card as a USB device over QEMU's usbredir protocol (a usb-redir device whose
// chardev ServeUSBRedir serves): a YubiKey's CCID interface at APDU level offering
// T=1, the one protocol piv-go connects with. Every message is a little-endian
// header (type, length of what follows, id: 32 bits until both sides said hello,
// then 64) and a type header with data; replies carry the id of the request.
const (
	urHello            = 0
	urDeviceConnect    = 1
	urReset            = 3
	urInterfaceInfo    = 4
	urEPInfo           = 5
	urSetConfiguration = 6
	urGetConfiguration = 7
	urConfigStatus     = 8
	urSetAltSetting    = 9
	urGetAltSetting    = 10
	urAltSettingStatus = 11
	urStartInterrupt   = 15
	urStopInterrupt    = 16
	urInterruptStatus  = 17
	urCancelData       = 21
	urControlPacket    = 100
	urBulkPacket       = 101

	urSuccess   = 0
	urCancelled = 1
	urStall     = 4

	// Capabilities: device_connect carries the device version, ep_info the
	// endpoints' packet sizes, ids are 64-bit once both sides said hello and bulk
	// lengths 32-bit; QEMU wants the last three for a device on its XHCI.
	urCapDeviceVersion = 1 << 1
	urCapMaxPacketSize = 1 << 4
	urCap64BitIDs      = 1 << 5
	urCap32BitBulk     = 1 << 6
	urCaps             = urCapDeviceVersion | urCapMaxPacketSize | urCap64BitIDs | urCap32BitBulk

	usbVendorYubico  = 0x1050
	usbProductCCID   = 0x0404 // YubiKey with only its CCID interface enabled
	usbBulkOut       = 0x01
	usbBulkIn        = 0x82
	usbMaxPacketSize = 64
)

// usbDeviceDescriptor: USB 2.0, full speed, Yubico's vendor and product.
var usbDeviceDescriptor = []byte{18, 1, 0x00, 0x02, 0, 0, 0, usbMaxPacketSize,
	usbVendorYubico & 0xFF, usbVendorYubico >> 8, usbProductCCID & 0xFF, usbProductCCID >> 8,
	0x43, 0x05, 1, 2, 0, 1}

// usbConfigDescriptor: one CCID interface with a bulk endpoint each way. The CCID
// class descriptor offers T=1 and short and extended APDU level exchanges, so the
// guest's driver sends APDUs as they are.
var usbConfigDescriptor = []byte{
	9, 2, 86, 0, 1, 1, 0, 0x80, 15,
	9, 4, 0, 0, 2, 0x0B, 0, 0, 0,
	0x36, 0x21, 0x10, 0x01, 0, 7,
	2, 0, 0, 0, // dwProtocols: T=1
	0xA0, 0x0F, 0, 0, 0xA0, 0x0F, 0, 0, 0, // clocks: 4 MHz
	0x80, 0x25, 0, 0, 0x80, 0x25, 0, 0, 0, // data rates: 9600
	0xFE, 0, 0, 0, // dwMaxIFSD
	0, 0, 0, 0, 0, 0, 0, 0, // synch protocols, mechanical
	0xFE, 0x00, 0x04, 0x00, // dwFeatures: automatic everything, extended APDU level
	0x00, 0x0C, 0, 0, // dwMaxCCIDMessageLength: 3072
	0xFF, 0xFF, 0, 0, 0, 1,
	7, 5, usbBulkOut, 2, usbMaxPacketSize, 0, 0,
	7, 5, usbBulkIn, 2, usbMaxPacketSize, 0, 0,
}

var usbStrings = []string{"", "Yubico", "YubiKey CCID"}

// usbRedir is one session of the device with QEMU.
type usbRedir struct {
	c       *Card
	w       io.Writer
	out     []byte  // bulk OUT bytes of a CCID message not yet complete
	in      []byte  // CCID replies the guest has not fetched yet
	waiting []inReq // bulk IN requests waiting for a reply
	peer    uint32  // QEMU's capabilities
	powered bool    // the guest powered the card on
}

type inReq struct {
	id     uint64
	length int
}

// ServeUSBRedir is the YubiKey plugged into the guest over conn (the chardev of a
// QEMU usb-redir device) until conn closes: removing the usb-redir device pulls it.
// It returns the connection's error (io.EOF once QEMU closes the chardev) or
// ErrUSBRedirProtocol.
func (c *Card) ServeUSBRedir(conn net.Conn) error {
	c.mu.Lock()
	c.resetSession()
	c.mu.Unlock()
	u := &usbRedir{c: c, w: conn}
	hello := make([]byte, 68)
	copy(hello, "vyubikey")
	binary.LittleEndian.PutUint32(hello[64:], urCaps)
	if err := u.send(urHello, 0, hello, nil); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	for {
		typ, id, body, err := u.read(r)
		if err != nil {
			return err
		}
		if err := u.handle(typ, id, body); err != nil {
			return err
		}
	}
}

// ids64 and bulk32 say whether both sides have those capabilities.
func (u *usbRedir) ids64() bool  { return u.peer&urCap64BitIDs != 0 }
func (u *usbRedir) bulk32() bool { return u.peer&urCap32BitBulk != 0 }

func (u *usbRedir) read(r io.Reader) (typ uint32, id uint64, body []byte, err error) {
	hdr := make([]byte, 12, 16)
	if u.ids64() {
		hdr = hdr[:16]
	}
	if _, err = io.ReadFull(r, hdr); err != nil {
		return 0, 0, nil, err
	}
	n := binary.LittleEndian.Uint32(hdr[4:])
	if n > 1<<20 {
		return 0, 0, nil, fmt.Errorf("%w: usbredir message of %d bytes", ErrUSBRedirProtocol, n)
	}
	body = make([]byte, n)
	if _, err = io.ReadFull(r, body); err != nil {
		return 0, 0, nil, err
	}
	id = uint64(binary.LittleEndian.Uint32(hdr[8:]))
	if u.ids64() {
		id = binary.LittleEndian.Uint64(hdr[8:])
	}
	return binary.LittleEndian.Uint32(hdr[:4]), id, body, nil
}

func (u *usbRedir) send(typ uint32, id uint64, th, data []byte) error {
	hdr := make([]byte, 16)
	binary.LittleEndian.PutUint32(hdr[0:], typ)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(len(th)+len(data)))
	binary.LittleEndian.PutUint64(hdr[8:], id)
	if !u.ids64() {
		hdr = hdr[:12]
	}
	_, err := u.w.Write(slices.Concat(hdr, th, data))
	return err
}

// handle answers one message from QEMU.
func (u *usbRedir) handle(typ uint32, id uint64, body []byte) error {
	u.c.log.Debug("vyubikey: usbredir", "type", typ, "id", id, "len", len(body))
	if len(body) < u.headerLen(typ) {
		return fmt.Errorf("%w: usbredir message %d of %d bytes", ErrUSBRedirProtocol, typ, len(body))
	}
	switch typ {
	case urHello:
		if len(body) >= 68 {
			u.peer = binary.LittleEndian.Uint32(body[64:]) & urCaps
		}
		return u.connect()
	case urSetConfiguration, urGetConfiguration:
		return u.send(urConfigStatus, id, []byte{urSuccess, 1}, nil)
	case urSetAltSetting:
		return u.send(urAltSettingStatus, id, []byte{urSuccess, body[0], body[1]}, nil)
	case urGetAltSetting:
		return u.send(urAltSettingStatus, id, []byte{urSuccess, body[0], 0}, nil)
	case urStartInterrupt, urStopInterrupt:
		return u.send(urInterruptStatus, id, []byte{urStall, body[0]}, nil)
	case urCancelData:
		return u.cancel(id)
	case urControlPacket:
		return u.control(id, body[:10], body[10:])
	case urBulkPacket:
		n := u.headerLen(typ)
		return u.bulk(id, body[:n], body[n:])
	case urReset:
		u.powered, u.out, u.in = false, nil, nil
	}
	return nil
}

// headerLen is the type header each message from QEMU must have.
func (u *usbRedir) headerLen(typ uint32) int {
	switch typ {
	case urHello:
		return 64
	case urSetAltSetting:
		return 2
	case urGetAltSetting, urStartInterrupt, urStopInterrupt, urSetConfiguration:
		return 1
	case urControlPacket:
		return 10
	case urBulkPacket:
		if u.bulk32() {
			return 10
		}
		return 8
	}
	return 0
}

// connect describes the device to QEMU, which then attaches it to the guest's bus.
func (u *usbRedir) connect() error {
	ifaces := make([]byte, 4+4*32)
	ifaces[0] = 1
	ifaces[4+32] = 0x0B // smart card class
	if err := u.send(urInterfaceInfo, 0, ifaces, nil); err != nil {
		return err
	}
	n := 3 * 32
	if u.peer&urCapMaxPacketSize != 0 {
		n += 2 * 32
	}
	eps := make([]byte, n)
	for i := range 32 {
		eps[i] = 0xFF // no such endpoint
	}
	// Index: the endpoint number, plus 16 for IN.
	for i, typ := range map[int]byte{0: 0, 16: 0, usbBulkOut: 2, 16 + usbBulkIn&0x0F: 2} {
		eps[i] = typ
		if n > 3*32 {
			binary.LittleEndian.PutUint16(eps[3*32+2*i:], usbMaxPacketSize)
		}
	}
	if err := u.send(urEPInfo, 0, eps, nil); err != nil {
		return err
	}
	dev := []byte{1, 0, 0, 0, usbVendorYubico & 0xFF, usbVendorYubico >> 8, usbProductCCID & 0xFF, usbProductCCID >> 8}
	if u.peer&urCapDeviceVersion != 0 {
		dev = append(dev, 0x43, 0x05)
	}
	return u.send(urDeviceConnect, 0, dev, nil)
}

// control answers a control transfer on endpoint 0: the standard descriptors and
// status; everything else stalls, as the YubiKey's CCID interface has no class
// requests the guest needs.
func (u *usbRedir) control(id uint64, th, data []byte) error {
	reqType, req := th[2], th[1]
	value, length := binary.LittleEndian.Uint16(th[4:]), int(binary.LittleEndian.Uint16(th[8:]))
	var resp []byte
	status := byte(urSuccess)
	switch {
	case reqType == 0x80 && req == 6:
		resp = usbDescriptor(value)
		if resp == nil {
			status = urStall
		}
	case reqType&0x80 != 0 && req == 0: // GET_STATUS
		resp = []byte{0, 0}
	case reqType&0x80 == 0 && (req == 1 || req == 3): // CLEAR_FEATURE, SET_FEATURE
	default:
		status = urStall
	}
	if reqType&0x80 == 0 {
		resp = nil
		length = len(data)
	} else {
		resp = resp[:min(len(resp), length)]
		length = len(resp)
	}
	out := slices.Clone(th)
	out[3] = status
	binary.LittleEndian.PutUint16(out[8:], uint16(length))
	return u.send(urControlPacket, id, out, resp)
}

func usbDescriptor(value uint16) []byte {
	switch typ, i := value>>8, int(value&0xFF); {
	case typ == 1:
		return usbDeviceDescriptor
	case typ == 2:
		return usbConfigDescriptor
	case typ == 3 && i == 0:
		return []byte{4, 3, 0x09, 0x04}
	case typ == 3 && i < len(usbStrings):
		b := []byte{byte(2 + 2*len(usbStrings[i])), 3}
		for _, r := range usbStrings[i] {
			b = append(b, byte(r), 0)
		}
		return b
	}
	return nil
}

// bulk takes the guest's CCID messages on the OUT endpoint and hands out the
// replies on the IN endpoint as the guest asks for them.
func (u *usbRedir) bulk(id uint64, th, data []byte) error {
	if th[0] == usbBulkIn {
		n := int(binary.LittleEndian.Uint16(th[2:]))
		if len(th) >= 10 {
			n |= int(binary.LittleEndian.Uint16(th[8:])) << 16
		}
		u.waiting = append(u.waiting, inReq{id, n})
		return u.deliver()
	}
	if err := u.send(urBulkPacket, id, u.bulkHeader(usbBulkOut, urSuccess, len(data)), nil); err != nil {
		return err
	}
	u.out = append(u.out, data...)
	for len(u.out) >= 10 {
		n := 10 + int(binary.LittleEndian.Uint32(u.out[1:]))
		if len(u.out) < n {
			break
		}
		u.in = append(u.in, u.ccid(u.out[:n])...)
		u.out = u.out[n:]
	}
	return u.deliver()
}

func (u *usbRedir) deliver() error {
	for len(u.waiting) > 0 && len(u.in) > 0 {
		req := u.waiting[0]
		n := min(len(u.in), req.length)
		if err := u.send(urBulkPacket, req.id, u.bulkHeader(usbBulkIn, urSuccess, n), u.in[:n]); err != nil {
			return err
		}
		u.in, u.waiting = u.in[n:], u.waiting[1:]
	}
	return nil
}

// bulkHeader is the type header of a bulk packet of n bytes.
func (u *usbRedir) bulkHeader(ep, status byte, n int) []byte {
	th := []byte{ep, status, byte(n), byte(n >> 8), 0, 0, 0, 0, byte(n >> 16), byte(n >> 24)}
	if !u.bulk32() {
		th = th[:8]
	}
	return th
}

// cancel ends a bulk IN request the guest gave up on.
func (u *usbRedir) cancel(id uint64) error {
	for i, req := range u.waiting {
		if req.id == id {
			u.waiting = slices.Delete(u.waiting, i, i+1)
			return u.send(urBulkPacket, id, u.bulkHeader(usbBulkIn, urCancelled, 0), nil)
		}
	}
	return nil
}
