package vyubikey

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"fmt"
)

const swWrongP1P2Slot uint16 = 0x6B00 // what the card says for a key reference it does not have

// maxObjectSize bounds the value of a data object (tag 53), as a YubiKey 5's
// object store does (yubico-piv-tool's limit).
const maxObjectSize = 3063

// PIV instructions (NIST SP 800-73-4 part 2; Yubico extensions F6..FF).
const (
	insVerify             = 0x20
	insChangeRef          = 0x24
	insResetRetry         = 0x2C
	insGenerate           = 0x47
	insAuthenticate       = 0x87
	insGetData            = 0xCB
	insPutData            = 0xDB
	insMoveKey            = 0xF6
	insGetMetadata        = 0xF7
	insGetSerial          = 0xF8
	insAttest             = 0xF9
	insSetPINRetries      = 0xFA
	insReset              = 0xFB
	insGetVersion         = 0xFD
	insImportKey          = 0xFE
	insSetMgmtKey         = 0xFF
	keyRefPIN        byte = 0x80
	keyRefPUK        byte = 0x81
	keyRefMgmt       byte = 0x9B
	keyRefAttest     byte = 0xF9
)

// piv is the PIV card application.
func (c *Card) piv(cmd command) ([]byte, uint16) {
	switch cmd.ins {
	case insGetVersion:
		v := c.st.Version
		return []byte{v[0], v[1], v[2]}, swOK
	case insGetSerial:
		b := make([]byte, 4)
		binary.BigEndian.PutUint32(b, c.st.Serial)
		return b, swOK
	case insVerify:
		return c.verify(cmd)
	case insChangeRef:
		return c.changeReference(cmd)
	case insResetRetry:
		return c.resetRetryCounter(cmd)
	case insAuthenticate:
		return c.generalAuthenticate(cmd)
	case insGenerate:
		return c.generate(cmd)
	case insImportKey:
		return c.importKey(cmd)
	case insGetData:
		return c.getData(cmd)
	case insPutData:
		return c.putData(cmd)
	case insAttest:
		return c.attest(cmd)
	case insGetMetadata:
		if !atLeast(c.st.Version, 5, 3, 0) {
			return nil, swInsNotSupported
		}
		return c.metadata(cmd)
	case insSetPINRetries:
		return c.setPINRetries(cmd)
	case insSetMgmtKey:
		return c.setManagementKey(cmd)
	case insReset:
		return c.reset(cmd)
	case insMoveKey:
		if !atLeast(c.st.Version, 5, 7, 0) {
			return nil, swInsNotSupported
		}
		return c.moveKey(cmd)
	}
	return nil, swInsNotSupported
}

// keySlot says whether ref is an asymmetric key slot: 9A, 9C, 9D, 9E, the
// retired key management slots 82..95 and the attestation key F9.
func keySlot(ref byte) bool {
	switch {
	case ref == 0x9A, ref == 0x9C, ref == 0x9D, ref == 0x9E, ref == keyRefAttest:
		return true
	case ref >= 0x82 && ref <= 0x95:
		return true
	}
	return false
}

func slotKey(ref byte) string { return fmt.Sprintf("%02x", ref) }

// defaultPINPolicy is the policy a key gets when generated or imported with
// policy "default": 9C (digital signature) always, 9E (card authentication)
// and F9 never, the others once.
func defaultPINPolicy(ref byte) byte {
	switch ref {
	case 0x9C:
		return pinPolicyAlways
	case 0x9E, keyRefAttest:
		return pinPolicyNever
	}
	return pinPolicyOnce
}

// ---- PIN and PUK ----

// validNewPIN checks a new 8-byte padded PIN or PUK: 6 to 8 characters, then
// 0xFF padding only.
func validNewPIN(b []byte) bool {
	if len(b) != 8 {
		return false
	}
	n := bytes.IndexByte(b, 0xFF)
	if n < 0 {
		n = 8
	}
	for _, x := range b[n:] {
		if x != 0xFF {
			return false
		}
	}
	return n >= 6
}

func (c *Card) verify(cmd command) ([]byte, uint16) {
	if cmd.p1 == 0xFF { // reset the security status of the reference
		if len(cmd.data) != 0 {
			return nil, swWrongLength
		}
		if cmd.p2 != keyRefPIN {
			return nil, swRefNotFound
		}
		c.sess.pinVerified, c.sess.pinFresh = false, false
		return nil, swOK
	}
	if cmd.p1 != 0x00 {
		return nil, swIncorrectP1P2
	}
	switch cmd.p2 {
	case keyRefPIN:
	case 0x96, 0x97: // biometric references (YubiKey Bio only)
		return nil, swFuncNotSupported
	default:
		return nil, swRefNotFound
	}
	st := c.st
	if len(cmd.data) == 0 { // status query
		switch {
		case st.PINRetriesLeft == 0:
			return nil, swAuthBlocked
		case c.sess.pinVerified:
			return nil, swOK
		}
		return nil, retriesSW(st.PINRetriesLeft)
	}
	if len(cmd.data) != 8 {
		return nil, swIncorrectData
	}
	if st.PINRetriesLeft == 0 {
		return nil, swAuthBlocked
	}
	if subtle.ConstantTimeCompare(cmd.data, st.PIN) != 1 {
		c.sess.pinVerified, c.sess.pinFresh = false, false
		st.PINRetriesLeft--
		if sw := c.save(); sw != swOK {
			return nil, sw
		}
		c.log.Info("vyubikey: wrong PIN", "retries_left", st.PINRetriesLeft)
		return nil, retriesSW(st.PINRetriesLeft)
	}
	c.sess.pinVerified, c.sess.pinFresh = true, true
	if st.PINRetriesLeft != st.PINRetriesMax {
		st.PINRetriesLeft = st.PINRetriesMax
		if sw := c.save(); sw != swOK {
			return nil, sw
		}
	}
	return nil, swOK
}

func (c *Card) changeReference(cmd command) ([]byte, uint16) {
	if cmd.p1 != 0x00 {
		return nil, swIncorrectP1P2
	}
	st := c.st
	var ref *[]byte
	var left *int
	var maxTries int
	switch cmd.p2 {
	case keyRefPIN:
		ref, left, maxTries = &st.PIN, &st.PINRetriesLeft, st.PINRetriesMax
	case keyRefPUK:
		ref, left, maxTries = &st.PUK, &st.PUKRetriesLeft, st.PUKRetriesMax
	default:
		return nil, swRefNotFound
	}
	if len(cmd.data) != 16 {
		return nil, swIncorrectData
	}
	if *left == 0 {
		return nil, swAuthBlocked
	}
	if !validNewPIN(cmd.data[8:]) {
		return nil, swIncorrectData
	}
	if subtle.ConstantTimeCompare(cmd.data[:8], *ref) != 1 {
		*left--
		if cmd.p2 == keyRefPIN {
			c.sess.pinVerified, c.sess.pinFresh = false, false
		}
		if sw := c.save(); sw != swOK {
			return nil, sw
		}
		return nil, retriesSW(*left)
	}
	*ref = bytes.Clone(cmd.data[8:])
	*left = maxTries
	return nil, c.save()
}

func (c *Card) resetRetryCounter(cmd command) ([]byte, uint16) {
	if cmd.p1 != 0x00 {
		return nil, swIncorrectP1P2
	}
	if cmd.p2 != keyRefPIN {
		return nil, swRefNotFound
	}
	st := c.st
	if len(cmd.data) != 16 {
		return nil, swIncorrectData
	}
	if st.PUKRetriesLeft == 0 {
		return nil, swAuthBlocked
	}
	if !validNewPIN(cmd.data[8:]) {
		return nil, swIncorrectData
	}
	if subtle.ConstantTimeCompare(cmd.data[:8], st.PUK) != 1 {
		st.PUKRetriesLeft--
		if sw := c.save(); sw != swOK {
			return nil, sw
		}
		return nil, retriesSW(st.PUKRetriesLeft)
	}
	st.PIN = bytes.Clone(cmd.data[8:])
	st.PINRetriesLeft = st.PINRetriesMax
	st.PUKRetriesLeft = st.PUKRetriesMax
	return nil, c.save()
}

func (c *Card) setPINRetries(cmd command) ([]byte, uint16) {
	if !c.sess.mgmtAuthed || !c.sess.pinVerified {
		return nil, swSecurityNotSatisfied
	}
	if cmd.p1 == 0 || cmd.p2 == 0 {
		return nil, swIncorrectP1P2
	}
	st := c.st
	st.PIN, st.PUK = padPIN(DefaultPIN), padPIN(DefaultPUK)
	st.PINRetriesMax, st.PINRetriesLeft = int(cmd.p1), int(cmd.p1)
	st.PUKRetriesMax, st.PUKRetriesLeft = int(cmd.p2), int(cmd.p2)
	c.sess.pinVerified, c.sess.pinFresh = false, false
	return nil, c.save()
}

// ---- management key ----

func mgmtKeyLen(alg byte) int {
	switch alg {
	case alg3DES, algAES192:
		return 24
	case algAES128:
		return 16
	case algAES256:
		return 32
	}
	return 0
}

func (c *Card) mgmtCipher() (cipher.Block, error) {
	if c.st.MgmtAlg == alg3DES {
		return des.NewTripleDESCipher(c.st.MgmtKey)
	}
	return aes.NewCipher(c.st.MgmtKey)
}

func (c *Card) setManagementKey(cmd command) ([]byte, uint16) {
	if cmd.p1 != 0xFF || (cmd.p2 != 0xFF && cmd.p2 != 0xFE) {
		return nil, swIncorrectP1P2
	}
	if !c.sess.mgmtAuthed {
		return nil, swSecurityNotSatisfied
	}
	d := cmd.data
	if len(d) < 3 || d[1] != keyRefMgmt || int(d[2]) != len(d)-3 {
		return nil, swIncorrectData
	}
	alg := d[0]
	n := mgmtKeyLen(alg)
	if n == 0 || n != len(d)-3 || (alg != alg3DES && !atLeast(c.st.Version, 5, 4, 0)) {
		return nil, swIncorrectData
	}
	c.st.MgmtAlg = alg
	c.st.MgmtKey = bytes.Clone(d[3:])
	c.st.MgmtTouch = touchPolicyNever
	if cmd.p2 == 0xFE {
		c.st.MgmtTouch = touchPolicyAlways
	}
	c.log.Info("vyubikey: management key changed", "alg", fmt.Sprintf("%02x", alg))
	return nil, c.save()
}

// mgmtAuthenticate is GENERAL AUTHENTICATE with the card management key 9B:
// mutual authentication (witness, then witness + challenge), single external
// authentication (witness only, or challenge then response) and internal
// authentication (challenge + empty response). P1 must be the key's algorithm.
func (c *Card) mgmtAuthenticate(alg byte, items []tlvItem) ([]byte, uint16) {
	w, hasW := findTLV(items, 0x80)
	ch, hasC := findTLV(items, 0x81)
	r, hasR := findTLV(items, 0x82)
	if alg != c.st.MgmtAlg {
		// OpenSC asks the card for random data this way, with algorithm 00.
		if alg == 0x00 && hasC && len(ch) == 0 && !hasW && !hasR {
			buf := make([]byte, 8)
			rand.Read(buf)
			return tlv(0x7C, tlv(0x81, buf)), swOK
		}
		return nil, swIncorrectData
	}
	block, err := c.mgmtCipher()
	if err != nil {
		return nil, swUnknown
	}
	bs := block.BlockSize()
	enc := func(in []byte) []byte {
		out := make([]byte, bs)
		block.Encrypt(out, in)
		return out
	}
	switch {
	case hasW && len(w) == 0 && !hasC && !hasR: // witness request
		c.sess.mgmtAuthed = false
		c.sess.witness = make([]byte, bs)
		rand.Read(c.sess.witness)
		return tlv(0x7C, tlv(0x80, enc(c.sess.witness))), swOK
	case hasW && len(w) == bs: // the decrypted witness
		expected := c.sess.witness
		c.sess.witness = nil
		if expected == nil || subtle.ConstantTimeCompare(w, expected) != 1 {
			c.sess.mgmtAuthed = false
			return nil, swSecurityNotSatisfied
		}
		switch {
		case !hasC && !hasR:
			c.sess.mgmtAuthed = true
			return nil, swOK
		case hasC && len(ch) == bs && (!hasR || len(r) == 0):
			c.sess.mgmtAuthed = true
			return tlv(0x7C, tlv(0x82, enc(ch))), swOK
		}
		return nil, swIncorrectData
	case hasC && len(ch) == 0 && !hasW && !hasR: // challenge request
		c.sess.mgmtAuthed = false
		c.sess.challenge = make([]byte, bs)
		rand.Read(c.sess.challenge)
		return tlv(0x7C, tlv(0x81, c.sess.challenge)), swOK
	case hasR && len(r) == bs && !hasW && !hasC: // response to that challenge
		expected := c.sess.challenge
		c.sess.challenge = nil
		if expected == nil || subtle.ConstantTimeCompare(r, enc(expected)) != 1 {
			c.sess.mgmtAuthed = false
			return nil, swSecurityNotSatisfied
		}
		c.sess.mgmtAuthed = true
		return nil, swOK
	case hasC && len(ch) == bs && hasR && len(r) == 0 && !hasW: // internal authenticate
		return tlv(0x7C, tlv(0x82, enc(ch))), swOK
	}
	return nil, swIncorrectData
}

// ---- GENERAL AUTHENTICATE ----

func (c *Card) generalAuthenticate(cmd command) ([]byte, uint16) {
	outer, rest, err := readTLV(cmd.data)
	if err != nil || len(rest) != 0 || outer.tag != 0x7C {
		return nil, swIncorrectData
	}
	items, err := parseTLVs(outer.value)
	if err != nil {
		return nil, swIncorrectData
	}
	if cmd.p2 == keyRefMgmt {
		return c.mgmtAuthenticate(cmd.p1, items)
	}
	if !keySlot(cmd.p2) {
		return nil, swWrongP1P2Slot
	}
	rec := c.st.Keys[slotKey(cmd.p2)]
	if rec == nil || rec.Alg != cmd.p1 {
		return nil, swIncorrectData
	}
	resp, hasResp := findTLV(items, 0x82)
	chal, hasChal := findTLV(items, 0x81)
	exp, hasExp := findTLV(items, 0x85)
	if !hasResp || len(resp) != 0 || hasChal == hasExp {
		return nil, swIncorrectData
	}
	switch rec.PINPolicy {
	case pinPolicyOnce:
		if !c.sess.pinVerified {
			return nil, swSecurityNotSatisfied
		}
	case pinPolicyAlways:
		if !c.sess.pinVerified || !c.sess.pinFresh {
			return nil, swSecurityNotSatisfied
		}
	}
	priv, err := rec.private()
	if err != nil {
		c.log.Error("vyubikey: stored key", "slot", slotKey(cmd.p2), "err", err)
		return nil, swUnknown
	}
	var out []byte
	if hasChal {
		out, err = privateOp(priv, chal)
	} else {
		out, err = agree(priv, exp)
	}
	if err != nil {
		return nil, swIncorrectData
	}
	if rec.PINPolicy == pinPolicyAlways {
		c.sess.pinFresh = false
	}
	return tlv(0x7C, tlv(0x82, out)), swOK
}

// privateOp signs (EC: a digest, truncated to the order's length as ECDSA does;
// Ed25519: the message) or does the raw RSA operation on a block of exactly the
// modulus length (the client pads; this is also RSA decryption).
func privateOp(priv crypto.PrivateKey, in []byte) ([]byte, error) {
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if len(in) != k.Size() {
			return nil, errBadKey
		}
		return rsaRaw(k, in)
	case *ecdsa.PrivateKey:
		n := (k.Curve.Params().BitSize + 7) / 8
		if len(in) > n {
			in = in[:n]
		}
		return ecdsa.SignASN1(rand.Reader, k, in)
	case ed25519.PrivateKey:
		return ed25519.Sign(k, in), nil
	}
	return nil, errBadKey
}

// agree is ECDH with the peer's public point (EC: uncompressed point; X25519:
// 32 bytes); the result is the shared secret.
func agree(priv crypto.PrivateKey, peer []byte) ([]byte, error) {
	var k *ecdh.PrivateKey
	switch p := priv.(type) {
	case *ecdsa.PrivateKey:
		var err error
		if k, err = p.ECDH(); err != nil {
			return nil, err
		}
	case *ecdh.PrivateKey:
		k = p
	default:
		return nil, errBadKey
	}
	pub, err := k.Curve().NewPublicKey(peer)
	if err != nil {
		return nil, err
	}
	return k.ECDH(pub)
}

// ---- key generation and import ----

// policies reads PIN (AA) and touch (AB) policy tags, applying the slot's defaults.
func policies(ref byte, items []tlvItem) (pp, tp byte, ok bool) {
	pp, tp = pinPolicyDefault, touchPolicyDefault
	if v, found := findTLV(items, 0xAA); found {
		if len(v) != 1 {
			return 0, 0, false
		}
		pp = v[0]
	}
	if v, found := findTLV(items, 0xAB); found {
		if len(v) != 1 {
			return 0, 0, false
		}
		tp = v[0]
	}
	if pp == pinPolicyDefault {
		pp = defaultPINPolicy(ref)
	}
	if tp == touchPolicyDefault {
		tp = touchPolicyNever
	}
	// Match-once/-always (04, 05) need a YubiKey Bio.
	if pp > pinPolicyAlways || tp > touchPolicyCached {
		return 0, 0, false
	}
	return pp, tp, true
}

func (c *Card) generate(cmd command) ([]byte, uint16) {
	if cmd.p1 != 0x00 {
		return nil, swIncorrectP1P2
	}
	if !keySlot(cmd.p2) {
		return nil, swWrongP1P2Slot
	}
	if !c.sess.mgmtAuthed {
		return nil, swSecurityNotSatisfied
	}
	outer, rest, err := readTLV(cmd.data)
	if err != nil || len(rest) != 0 || outer.tag != 0xAC {
		return nil, swIncorrectData
	}
	items, err := parseTLVs(outer.value)
	if err != nil {
		return nil, swIncorrectData
	}
	a, ok := findTLV(items, 0x80)
	if !ok || len(a) != 1 || !supportsAlg(c.st.Version, a[0]) {
		return nil, swIncorrectData
	}
	pp, tp, ok := policies(cmd.p2, items)
	if !ok {
		return nil, swIncorrectData
	}
	priv, err := generateKey(a[0])
	if err != nil {
		return nil, swUnknown
	}
	pub, err := encodePublic(publicOf(priv))
	if err != nil {
		return nil, swUnknown
	}
	der, err := marshalKey(priv)
	if err != nil {
		return nil, swUnknown
	}
	c.st.Keys[slotKey(cmd.p2)] = &keyRecord{Alg: a[0], PINPolicy: pp, TouchPolicy: tp, Origin: originGenerated, PKCS8: der}
	if sw := c.save(); sw != swOK {
		return nil, sw
	}
	c.log.Info("vyubikey: key generated", "slot", slotKey(cmd.p2), "alg", fmt.Sprintf("%02x", a[0]))
	return tlv(0x7F49, pub), swOK
}

func (c *Card) importKey(cmd command) ([]byte, uint16) {
	if !keySlot(cmd.p2) {
		return nil, swWrongP1P2Slot
	}
	if !c.sess.mgmtAuthed {
		return nil, swSecurityNotSatisfied
	}
	alg := cmd.p1
	if !supportsAlg(c.st.Version, alg) {
		return nil, swIncorrectData
	}
	items, err := parseTLVs(cmd.data)
	if err != nil {
		return nil, swIncorrectData
	}
	pp, tp, ok := policies(cmd.p2, items)
	if !ok {
		return nil, swIncorrectData
	}
	priv, err := importKey(alg, items)
	if err != nil {
		return nil, swIncorrectData
	}
	if got, ok := keyAlg(priv); !ok || got != alg {
		return nil, swIncorrectData
	}
	der, err := marshalKey(priv)
	if err != nil {
		return nil, swUnknown
	}
	c.st.Keys[slotKey(cmd.p2)] = &keyRecord{Alg: alg, PINPolicy: pp, TouchPolicy: tp, Origin: originImported, PKCS8: der}
	if sw := c.save(); sw != swOK {
		return nil, sw
	}
	c.log.Info("vyubikey: key imported", "slot", slotKey(cmd.p2), "alg", fmt.Sprintf("%02x", alg))
	return nil, swOK
}

// moveKey is MOVE KEY (5.7): P2 the source slot, P1 the destination or FF to
// delete the key.
func (c *Card) moveKey(cmd command) ([]byte, uint16) {
	if !c.sess.mgmtAuthed {
		return nil, swSecurityNotSatisfied
	}
	src := cmd.p2
	if !keySlot(src) || src == keyRefAttest || (cmd.p1 != 0xFF && (!keySlot(cmd.p1) || cmd.p1 == keyRefAttest)) {
		return nil, swWrongP1P2Slot
	}
	rec := c.st.Keys[slotKey(src)]
	if rec == nil {
		return nil, swRefNotFound
	}
	delete(c.st.Keys, slotKey(src))
	if cmd.p1 != 0xFF {
		c.st.Keys[slotKey(cmd.p1)] = rec
	}
	return nil, c.save()
}

// ---- data objects ----

// discoveryObject: the PIV AID and the PIN usage policy "PIV PIN only"
// (5F2F 40 00), as a YubiKey reports it.
func discoveryObject() []byte {
	return tlv(0x7E, tlv(0x4F, aidPIV), tlv(0x5F2F, []byte{0x40, 0x00}))
}

// objectAllowed: the PIV objects 5FC101..5FC123 and Yubico's 5FFF00..5FFF15.
func objectAllowed(id uint32) bool {
	return (id >= 0x5FC101 && id <= 0x5FC123) || (id >= 0x5FFF00 && id <= 0x5FFF15)
}

// pinProtectedObject: objects only readable after PIN verification: card
// holder fingerprints, facial image, printed information, iris images,
// pairing code.
func pinProtectedObject(id uint32) bool {
	switch id {
	case 0x5FC103, 0x5FC108, 0x5FC109, 0x5FC121, 0x5FC123:
		return true
	}
	return false
}

func objectKey(id uint32) string { return fmt.Sprintf("%06x", id) }

// objectID reads the 5C tag list of GET DATA / PUT DATA.
func objectID(b []byte) (uint32, bool) {
	if len(b) == 0 || len(b) > 3 {
		return 0, false
	}
	var id uint32
	for _, x := range b {
		id = id<<8 | uint32(x)
	}
	return id, true
}

func (c *Card) getData(cmd command) ([]byte, uint16) {
	if cmd.p1 != 0x3F || cmd.p2 != 0xFF {
		return nil, swIncorrectP1P2
	}
	item, rest, err := readTLV(cmd.data)
	if err != nil || len(rest) != 0 || item.tag != 0x5C {
		return nil, swIncorrectData
	}
	id, ok := objectID(item.value)
	if !ok {
		return nil, swIncorrectData
	}
	switch {
	case id == 0x7E:
		return discoveryObject(), swOK
	case !objectAllowed(id):
		return nil, swNotFound
	case pinProtectedObject(id) && !c.sess.pinVerified:
		return nil, swSecurityNotSatisfied
	}
	v, ok := c.st.Objects[objectKey(id)]
	if !ok {
		return nil, swNotFound
	}
	return tlv(0x53, v), swOK
}

func (c *Card) putData(cmd command) ([]byte, uint16) {
	if cmd.p1 != 0x3F || cmd.p2 != 0xFF {
		return nil, swIncorrectP1P2
	}
	if !c.sess.mgmtAuthed {
		return nil, swSecurityNotSatisfied
	}
	items, err := parseTLVs(cmd.data)
	if err != nil || len(items) != 2 || items[0].tag != 0x5C || items[1].tag != 0x53 {
		return nil, swIncorrectData
	}
	id, ok := objectID(items[0].value)
	if !ok || !objectAllowed(id) {
		return nil, swIncorrectData
	}
	v := items[1].value
	if len(v) > maxObjectSize {
		return nil, swNoSpace
	}
	if len(v) == 0 {
		delete(c.st.Objects, objectKey(id))
	} else {
		c.st.Objects[objectKey(id)] = bytes.Clone(v)
	}
	return nil, c.save()
}

// ---- attestation ----

func (c *Card) attest(cmd command) ([]byte, uint16) {
	ref := cmd.p1
	if !keySlot(ref) {
		return nil, swWrongP1P2Slot
	}
	rec := c.st.Keys[slotKey(ref)]
	// No key, an imported key, or the attestation key itself: a YubiKey
	// answers "incorrect parameter".
	if ref == keyRefAttest || rec == nil || rec.Origin != originGenerated {
		return nil, swIncorrectData
	}
	f9 := c.st.Keys[slotKey(keyRefAttest)]
	f9obj, ok := c.st.Objects[objectKey(0x5FFF01)]
	if f9 == nil || !ok {
		return nil, swIncorrectData
	}
	f9Cert, err := certFromObject(f9obj)
	if err != nil {
		return nil, swIncorrectData
	}
	f9Priv, err := f9.private()
	if err != nil {
		return nil, swUnknown
	}
	signer, ok := f9Priv.(crypto.Signer)
	if !ok {
		return nil, swIncorrectData
	}
	priv, err := rec.private()
	if err != nil {
		return nil, swUnknown
	}
	der, err := attestCertificate(ref, publicOf(priv), rec.PINPolicy, rec.TouchPolicy,
		c.st.Version, c.st.Serial, c.st.FormFactor, f9Cert, signer)
	if err != nil {
		c.log.Error("vyubikey: attestation", "slot", slotKey(ref), "err", err)
		return nil, swIncorrectData
	}
	return der, swOK
}

// certFromObject parses a certificate object (70 cert, 71 info, FE EDC).
func certFromObject(obj []byte) (*x509.Certificate, error) {
	items, err := parseTLVs(obj)
	if err != nil {
		return nil, err
	}
	der, ok := findTLV(items, 0x70)
	if !ok {
		return nil, errTLV
	}
	return x509.ParseCertificate(der)
}

// ---- metadata ----

func (c *Card) metadata(cmd command) ([]byte, uint16) {
	if cmd.p1 != 0x00 {
		return nil, swIncorrectP1P2
	}
	st := c.st
	boolByte := func(b bool) []byte {
		if b {
			return []byte{1}
		}
		return []byte{0}
	}
	switch ref := cmd.p2; {
	case ref == keyRefPIN:
		return bytes.Join([][]byte{
			tlv(0x01, []byte{algPIN}),
			tlv(0x05, boolByte(bytes.Equal(st.PIN, padPIN(DefaultPIN)))),
			tlv(0x06, []byte{byte(st.PINRetriesMax), byte(st.PINRetriesLeft)}),
		}, nil), swOK
	case ref == keyRefPUK:
		return bytes.Join([][]byte{
			tlv(0x01, []byte{algPIN}),
			tlv(0x05, boolByte(bytes.Equal(st.PUK, padPIN(DefaultPUK)))),
			tlv(0x06, []byte{byte(st.PUKRetriesMax), byte(st.PUKRetriesLeft)}),
		}, nil), swOK
	case ref == keyRefMgmt:
		return bytes.Join([][]byte{
			tlv(0x01, []byte{st.MgmtAlg}),
			tlv(0x02, []byte{0x00, st.MgmtTouch}),
			tlv(0x05, boolByte(bytes.Equal(st.MgmtKey, DefaultManagementKey))),
		}, nil), swOK
	case keySlot(ref):
		rec := st.Keys[slotKey(ref)]
		if rec == nil {
			return nil, swRefNotFound
		}
		priv, err := rec.private()
		if err != nil {
			return nil, swUnknown
		}
		pub, err := encodePublic(publicOf(priv))
		if err != nil {
			return nil, swUnknown
		}
		return bytes.Join([][]byte{
			tlv(0x01, []byte{rec.Alg}),
			tlv(0x02, []byte{rec.PINPolicy, rec.TouchPolicy}),
			tlv(0x03, []byte{rec.Origin}),
			tlv(0x04, pub),
		}, nil), swOK
	}
	return nil, swWrongP1P2Slot
}

// ---- reset ----

// reset is RESET (FB): only when both PIN and PUK are blocked. Keys, objects,
// PIN, PUK, retries and management key go back to factory state; the
// attestation key and its certificate stay.
func (c *Card) reset(cmd command) ([]byte, uint16) {
	st := c.st
	if st.PINRetriesLeft != 0 || st.PUKRetriesLeft != 0 {
		return nil, swConditionsNotMet
	}
	f9 := st.Keys[slotKey(keyRefAttest)]
	f9obj, hasObj := st.Objects[objectKey(0x5FFF01)]
	st.Keys = map[string]*keyRecord{}
	st.Objects = map[string][]byte{}
	if f9 != nil {
		st.Keys[slotKey(keyRefAttest)] = f9.clone()
	}
	if hasObj {
		st.Objects[objectKey(0x5FFF01)] = f9obj
	}
	resetCredentials(st, c.cfg.ManagementKeyAlgorithm)
	c.sess = session{app: appPIV}
	c.log.Info("vyubikey: PIV application reset")
	return nil, c.save()
}
