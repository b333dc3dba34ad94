package vyubikey

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tlogWriter sends the card's log to the test log.
type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newTestCard(t *testing.T, cfg Config) *Card {
	t.Helper()
	if cfg.StatePath == "" {
		cfg.StatePath = filepath.Join(t.TempDir(), "state.json")
	}
	cfg.Logger = slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func hx(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// tx sends one APDU and splits the answer.
func tx(t *testing.T, c *Card, apdu []byte) ([]byte, uint16) {
	t.Helper()
	r := c.HandleAPDU(apdu)
	if len(r) < 2 {
		t.Fatalf("short response %x", r)
	}
	return r[:len(r)-2], uint16(r[len(r)-2])<<8 | uint16(r[len(r)-1])
}

// txAll sends a command the way piv-go does (chaining CLA 10 in chunks of 255,
// then GET RESPONSE while 61xx) and returns the whole answer.
func txAll(t *testing.T, c *Card, ins, p1, p2 byte, data []byte) ([]byte, uint16) {
	t.Helper()
	for len(data) > 255 {
		_, sw := tx(t, c, append([]byte{0x10, ins, p1, p2, 0xFF}, data[:255]...))
		if sw != swOK {
			return nil, sw
		}
		data = data[255:]
	}
	apdu := []byte{0x00, ins, p1, p2}
	if len(data) > 0 {
		apdu = append(append(apdu, byte(len(data))), data...)
	}
	out, sw := tx(t, c, apdu)
	for sw>>8 == 0x61 {
		var more []byte
		more, sw = tx(t, c, []byte{0x00, 0xC0, 0x00, 0x00, 0x00})
		out = append(out, more...)
	}
	return out, sw
}

func mustSW(t *testing.T, got, want uint16) {
	t.Helper()
	if got != want {
		t.Fatalf("status %04x, want %04x", got, want)
	}
}

// mgmtAuth does mutual authentication with the management key.
func mgmtAuth(t *testing.T, c *Card, alg byte, key []byte) uint16 {
	t.Helper()
	var block cipher.Block
	var err error
	if alg == alg3DES {
		block, err = des.NewTripleDESCipher(key)
	} else {
		block, err = aes.NewCipher(key)
	}
	if err != nil {
		t.Fatal(err)
	}
	bs := block.BlockSize()
	resp, sw := tx(t, c, []byte{0x00, 0x87, alg, 0x9B, 0x04, 0x7C, 0x02, 0x80, 0x00})
	if sw != swOK {
		return sw
	}
	if len(resp) != 4+bs || resp[0] != 0x7C || resp[2] != 0x80 {
		t.Fatalf("witness %x", resp)
	}
	w := make([]byte, bs)
	block.Decrypt(w, resp[4:])
	chal := bytes.Repeat([]byte{0x5A}, bs)
	data := tlv(0x7C, tlv(0x80, w), tlv(0x81, chal))
	resp, sw = tx(t, c, append([]byte{0x00, 0x87, alg, 0x9B, byte(len(data))}, data...))
	if sw != swOK {
		return sw
	}
	want := make([]byte, bs)
	block.Encrypt(want, chal)
	if !bytes.Equal(resp, tlv(0x7C, tlv(0x82, want))) {
		t.Fatalf("card's response to the challenge %x", resp)
	}
	return swOK
}

func verifyPIN(t *testing.T, c *Card, pin string) uint16 {
	t.Helper()
	_, sw := tx(t, c, append([]byte{0x00, 0x20, 0x00, 0x80, 0x08}, padPIN(pin)...))
	return sw
}

func TestATR(t *testing.T) {
	var x byte
	for _, b := range ATR[1:] {
		x ^= b
	}
	if x != 0 {
		t.Fatalf("ATR check byte wrong: xor %02x", x)
	}
	// Historical bytes (compact TLV) carry "YubiKey", which OpenSC matches.
	if !bytes.Contains(ATR, []byte("YubiKey")) {
		t.Fatal("ATR lacks YubiKey")
	}
}

func TestParseCommand(t *testing.T) {
	for _, tc := range []struct {
		in       string
		lc, ne   int
		hasLe    bool
		extended bool
		sw       uint16
	}{
		{in: "00FD0000", ne: 256},
		{in: "00FD000000", ne: 256, hasLe: true},
		{in: "00FD000003", ne: 3, hasLe: true},
		{in: "00A4040005A000000308", lc: 5, ne: 256},
		{in: "00A4040005A00000030800", lc: 5, ne: 256, hasLe: true},
		{in: "00A4040005A000000308", lc: 5, ne: 256},
		{in: "00CB3FFF000005" + "5C035FC105" + "0000", lc: 5, ne: 65536, hasLe: true, extended: true},
		{in: "00CB3FFF000005" + "5C035FC105", lc: 5, ne: 65536, extended: true},
		{in: "00C00000000100", ne: 256, hasLe: true, extended: true},
		{in: "00A40400", ne: 256},
		{in: "00A404", sw: swWrongLength},
		{in: "00A4040005A0000003", sw: swWrongLength},
	} {
		c, sw := parseCommand(hx(tc.in))
		if sw != tc.sw {
			t.Errorf("%s: sw %04x want %04x", tc.in, sw, tc.sw)
			continue
		}
		if sw != 0 {
			continue
		}
		if len(c.data) != tc.lc || c.ne != tc.ne || c.hasLe != tc.hasLe || c.extended != tc.extended {
			t.Errorf("%s: got lc %d ne %d le %v ext %v", tc.in, len(c.data), c.ne, c.hasLe, c.extended)
		}
	}
}

func TestTLV(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 255, 256, 1000, 70000} {
		v := bytes.Repeat([]byte{7}, n)
		enc := tlv(0x7F49, v)
		it, rest, err := readTLV(enc)
		if err != nil || len(rest) != 0 || it.tag != 0x7F49 || !bytes.Equal(it.value, v) {
			t.Fatalf("n=%d: %v %x %d", n, err, it.tag, len(it.value))
		}
	}
	it, _, err := readTLV(hx("5FC1090100"))
	if err != nil || it.tag != 0x5FC109 {
		t.Fatalf("3-byte tag: %x %v", it.tag, err)
	}
	if _, _, err := readTLV(hx("5FC18101")); err == nil {
		t.Fatal("4-byte tag accepted")
	}
	if _, _, err := readTLV(hx("530A01")); err == nil {
		t.Fatal("overlong length accepted")
	}
}

func TestSelectAndIdentity(t *testing.T) {
	c := newTestCard(t, Config{Serial: 424242})
	resp, sw := tx(t, c, hx("00A4040005A000000308"))
	mustSW(t, sw, swOK)
	if want := hx("61114F0600001000010079074F05A000000308"); !bytes.Equal(resp, want) {
		t.Fatalf("select response %x, want %x", resp, want)
	}
	resp, sw = tx(t, c, hx("00FD000000"))
	mustSW(t, sw, swOK)
	if !bytes.Equal(resp, []byte{5, 7, 1}) {
		t.Fatalf("version %x", resp)
	}
	resp, sw = tx(t, c, hx("00F8000000"))
	mustSW(t, sw, swOK)
	if !bytes.Equal(resp, hx("00067932")) {
		t.Fatalf("serial %x", resp)
	}
	_, sw = tx(t, c, hx("00A4040007A0000005270101"))
	mustSW(t, sw, swNotFound)
	// Still PIV after a failed select.
	_, sw = tx(t, c, hx("00FD0000"))
	mustSW(t, sw, swOK)
	_, sw = tx(t, c, hx("00840000"))
	mustSW(t, sw, swInsNotSupported)
	_, sw = tx(t, c, hx("0CFD0000"))
	mustSW(t, sw, swClaNotSupported)

	// Management application: version string and device info.
	resp, sw = tx(t, c, hx("00A4040008A000000527471117"))
	mustSW(t, sw, swOK)
	if string(resp) != "5.7.1" {
		t.Fatalf("management select %q", resp)
	}
	resp, sw = tx(t, c, hx("001D000000"))
	mustSW(t, sw, swOK)
	if int(resp[0]) != len(resp)-1 {
		t.Fatalf("device info length %x", resp)
	}
	items, err := parseTLVs(resp[1:])
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := findTLV(items, 0x02); !bytes.Equal(v, hx("00067932")) {
		t.Fatalf("device info serial %x", v)
	}
	if v, _ := findTLV(items, 0x04); !bytes.Equal(v, []byte{FormFactorUSBAKeychain}) {
		t.Fatalf("form factor %x", v)
	}
	// PIV instructions are unknown there.
	_, sw = tx(t, c, hx("00FD0000"))
	mustSW(t, sw, swInsNotSupported)

	// OTP application (how YubiKey 4 clients read the serial).
	_, sw = tx(t, c, hx("00A4040008A000000527200101"))
	mustSW(t, sw, swOK)
	resp, sw = tx(t, c, hx("00011000"))
	mustSW(t, sw, swOK)
	if !bytes.Equal(resp, hx("00067932")) {
		t.Fatalf("OTP serial %x", resp)
	}
	// Long-form PIV AID.
	_, sw = tx(t, c, hx("00A404000BA000000308000010000100"))
	mustSW(t, sw, swOK)
	resp, sw = tx(t, c, hx("00CB3FFF035C017E00"))
	mustSW(t, sw, swOK)
	if want := hx("7E124F0BA0000003080000100001005F2F024000"); !bytes.Equal(resp, want) {
		t.Fatalf("discovery %x, want %x", resp, want)
	}
}

func TestPIN(t *testing.T) {
	c := newTestCard(t, Config{})
	_, sw := tx(t, c, hx("0020008000"))
	mustSW(t, sw, 0x63C3)
	mustSW(t, verifyPIN(t, c, "654321"), 0x63C2)
	_, sw = tx(t, c, hx("0020008000"))
	mustSW(t, sw, 0x63C2)
	mustSW(t, verifyPIN(t, c, DefaultPIN), swOK)
	_, sw = tx(t, c, hx("0020008000"))
	mustSW(t, sw, swOK)
	// A good PIN restores the counter.
	_, sw = tx(t, c, hx("00200080"))
	mustSW(t, sw, swOK)
	// Reset the verification.
	_, sw = tx(t, c, hx("00 20 FF 80"))
	mustSW(t, sw, swOK)
	_, sw = tx(t, c, hx("0020008000"))
	mustSW(t, sw, 0x63C3)
	// Wrong length and unknown references.
	_, sw = tx(t, c, hx("0020008003313233"))
	mustSW(t, sw, swIncorrectData)
	_, sw = tx(t, c, hx("0020009600"))
	mustSW(t, sw, swFuncNotSupported)

	// Change PIN: too short a new PIN, wrong old PIN, then right.
	_, sw = tx(t, c, append(hx("0024008010"), append(padPIN(DefaultPIN), padPIN("12345")...)...))
	mustSW(t, sw, swIncorrectData)
	_, sw = tx(t, c, append(hx("0024008010"), append(padPIN("000000"), padPIN("11112222")...)...))
	mustSW(t, sw, 0x63C2)
	_, sw = tx(t, c, append(hx("0024008010"), append(padPIN(DefaultPIN), padPIN("11112222")...)...))
	mustSW(t, sw, swOK)
	mustSW(t, verifyPIN(t, c, DefaultPIN), 0x63C2)
	mustSW(t, verifyPIN(t, c, "00000000"), 0x63C1)
	mustSW(t, verifyPIN(t, c, "00000000"), 0x63C0)
	// Blocked: even the right PIN is refused, and so is the status query.
	mustSW(t, verifyPIN(t, c, "11112222"), swAuthBlocked)
	_, sw = tx(t, c, hx("0020008000"))
	mustSW(t, sw, swAuthBlocked)

	// The counters are state: a card loaded from the file is still blocked.
	c2 := newTestCard(t, Config{StatePath: c.cfg.StatePath})
	mustSW(t, verifyPIN(t, c2, "11112222"), swAuthBlocked)

	// Unblock with the PUK: wrong PUK first.
	_, sw = tx(t, c2, append(hx("002C008010"), append(padPIN("87654321"), padPIN("246810")...)...))
	mustSW(t, sw, 0x63C2)
	_, sw = tx(t, c2, append(hx("002C008010"), append(padPIN(DefaultPUK), padPIN("246810")...)...))
	mustSW(t, sw, swOK)
	mustSW(t, verifyPIN(t, c2, "246810"), swOK)
	// The PUK counter was restored too; change the PUK.
	_, sw = tx(t, c2, append(hx("0024008110"), append(padPIN(DefaultPUK), padPIN("99887766")...)...))
	mustSW(t, sw, swOK)

	// Metadata of PIN and PUK: not default, 3 of 3 tries.
	resp, sw := tx(t, c2, hx("00F7008000"))
	mustSW(t, sw, swOK)
	if want := hx("0101FF 050100 06020303"); !bytes.Equal(resp, want) {
		t.Fatalf("PIN metadata %x want %x", resp, want)
	}
}

func TestManagementKey(t *testing.T) {
	c := newTestCard(t, Config{})
	// 5.7: the default key is AES-192; 3DES is refused like a real card does.
	_, sw := tx(t, c, hx("008703 9B 04 7C028000"))
	mustSW(t, sw, swIncorrectData)
	resp, sw := tx(t, c, hx("00F7009B00"))
	mustSW(t, sw, swOK)
	if want := hx("01010A 02020001 050101"); !bytes.Equal(resp, want) {
		t.Fatalf("9B metadata %x", resp)
	}
	// Nothing needing the key works before authentication.
	_, sw = tx(t, c, hx("00470 09A 05 AC03800111"))
	mustSW(t, sw, swSecurityNotSatisfied)
	// A wrong key fails.
	mustSW(t, mgmtAuth(t, c, algAES192, bytes.Repeat([]byte{1}, 24)), swSecurityNotSatisfied)
	mustSW(t, mgmtAuth(t, c, algAES192, DefaultManagementKey), swOK)

	// Change to AES-128, then AES-256 with touch, then 3DES.
	k128 := bytes.Repeat([]byte{0x24}, 16)
	_, sw = tx(t, c, append(hx("00FFFFFF13 089B10"), k128...))
	mustSW(t, sw, swOK)
	mustSW(t, mgmtAuth(t, c, algAES128, k128), swOK)
	// A key of the wrong length for its algorithm is refused.
	_, sw = tx(t, c, append(hx("00FFFFFF13 0A9B10"), k128...))
	mustSW(t, sw, swIncorrectData)
	k256 := bytes.Repeat([]byte{0x42}, 32)
	_, sw = tx(t, c, append(hx("00FFFFFE23 0C9B20"), k256...))
	mustSW(t, sw, swOK)
	resp, _ = tx(t, c, hx("00F7009B00"))
	if want := hx("01010C 02020002 050100"); !bytes.Equal(resp, want) {
		t.Fatalf("9B metadata %x", resp)
	}
	mustSW(t, mgmtAuth(t, c, algAES256, k256), swOK)
	k3 := hx("0102030405060708 1112131415161718 2122232425262728")
	_, sw = tx(t, c, append(hx("00FFFFFF1B 039B18"), k3...))
	mustSW(t, sw, swOK)
	mustSW(t, mgmtAuth(t, c, alg3DES, k3), swOK)

	// Challenge/response (yubico-piv-tool's ykpiv_auth_getchallenge).
	resp, sw = tx(t, c, hx("0087039B047C028100"))
	mustSW(t, sw, swOK)
	block, _ := des.NewTripleDESCipher(k3)
	enc := make([]byte, 8)
	block.Encrypt(enc, resp[4:])
	_, sw = tx(t, c, append(hx("0087039B0C7C0A8208"), enc...))
	mustSW(t, sw, swOK)

	// Firmware before 5.7 defaults to 3DES.
	old := newTestCard(t, Config{Version: [3]byte{5, 4, 3}})
	mustSW(t, mgmtAuth(t, old, alg3DES, DefaultManagementKey), swOK)
}

func TestKeysAndPolicies(t *testing.T) {
	c := newTestCard(t, Config{})
	mustSW(t, mgmtAuth(t, c, algAES192, DefaultManagementKey), swOK)
	// Generate P-256 in 9C: default PIN policy "always".
	resp, sw := txAll(t, c, 0x47, 0x00, 0x9C, hx("AC03800111"))
	mustSW(t, sw, swOK)
	it, _, err := readTLV(resp)
	if err != nil || it.tag != 0x7F49 {
		t.Fatalf("generate response %x", resp)
	}
	md, sw := txAll(t, c, 0xF7, 0x00, 0x9C, nil)
	mustSW(t, sw, swOK)
	items, _ := parseTLVs(md)
	if v, _ := findTLV(items, 0x02); !bytes.Equal(v, []byte{pinPolicyAlways, touchPolicyNever}) {
		t.Fatalf("policy %x", v)
	}
	if v, _ := findTLV(items, 0x04); !bytes.Equal(v, it.value) {
		t.Fatal("metadata public key differs")
	}
	digest := sha256.Sum256([]byte("hello"))
	sign := func() uint16 {
		_, sw := txAll(t, c, 0x87, 0x11, 0x9C, tlv(0x7C, []byte{0x82, 0x00}, tlv(0x81, digest[:])))
		return sw
	}
	mustSW(t, sign(), swSecurityNotSatisfied)
	mustSW(t, verifyPIN(t, c, DefaultPIN), swOK)
	mustSW(t, sign(), swOK)
	// PIN "always": one signature per VERIFY.
	mustSW(t, sign(), swSecurityNotSatisfied)
	mustSW(t, verifyPIN(t, c, DefaultPIN), swOK)
	mustSW(t, sign(), swOK)
	// Wrong algorithm for the slot; empty slot; bad slot.
	_, sw = txAll(t, c, 0x87, 0x14, 0x9C, tlv(0x7C, []byte{0x82, 0x00}, tlv(0x81, digest[:])))
	mustSW(t, sw, swIncorrectData)
	_, sw = txAll(t, c, 0x87, 0x11, 0x9D, tlv(0x7C, []byte{0x82, 0x00}, tlv(0x81, digest[:])))
	mustSW(t, sw, swIncorrectData)
	_, sw = txAll(t, c, 0x47, 0x00, 0x9F, hx("AC03800111"))
	mustSW(t, sw, 0x6B00)
	// Unsupported algorithm / Bio policy.
	_, sw = txAll(t, c, 0x47, 0x00, 0x9A, hx("AC038001FF"))
	mustSW(t, sw, swIncorrectData)
	_, sw = txAll(t, c, 0x47, 0x00, 0x9A, hx("AC06800111AA0104"))
	mustSW(t, sw, swIncorrectData)

	// Attestation of the generated key chains to the card's root.
	der, sw := txAll(t, c, 0xF9, 0x9C, 0x00, nil)
	mustSW(t, sw, swOK)
	att, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	obj, sw := txAll(t, c, 0xCB, 0x3F, 0xFF, hx("5C035FFF01"))
	mustSW(t, sw, swOK)
	it, _, _ = readTLV(obj)
	f9, err := certFromObject(it.value)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.AttestationRoot())
	inter := x509.NewCertPool()
	inter.AddCert(f9)
	if _, err := att.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatal(err)
	}
	if att.Subject.CommonName != "YubiKey PIV Attestation 9c" {
		t.Fatalf("subject %q", att.Subject.CommonName)
	}
	pk, ok := att.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("attested key %T", att.PublicKey)
	}
	pub, _ := pk.ECDH()
	if !bytes.Equal(tlv(0x86, pub.Bytes()), it0(t, resp)) {
		t.Fatal("attested key is not the slot's")
	}
	// Empty slot and f9: incorrect parameter.
	_, sw = txAll(t, c, 0xF9, 0x9D, 0x00, nil)
	mustSW(t, sw, swIncorrectData)
	_, sw = txAll(t, c, 0xF9, 0xF9, 0x00, nil)
	mustSW(t, sw, swIncorrectData)
	_, sw = txAll(t, c, 0xF7, 0x00, 0x9D, nil)
	mustSW(t, sw, swRefNotFound)

	// Move 9C to 85, then delete it.
	_, sw = tx(t, c, hx("00F6859C"))
	mustSW(t, sw, swOK)
	_, sw = txAll(t, c, 0xF7, 0x00, 0x9C, nil)
	mustSW(t, sw, swRefNotFound)
	_, sw = txAll(t, c, 0xF7, 0x00, 0x85, nil)
	mustSW(t, sw, swOK)
	_, sw = tx(t, c, hx("00F6FF85"))
	mustSW(t, sw, swOK)
	_, sw = txAll(t, c, 0xF7, 0x00, 0x85, nil)
	mustSW(t, sw, swRefNotFound)
}

func it0(t *testing.T, b []byte) []byte {
	t.Helper()
	it, _, err := readTLV(b)
	if err != nil {
		t.Fatal(err)
	}
	return it.value
}

func TestObjectsChainingAndLengths(t *testing.T) {
	c := newTestCard(t, Config{})
	put := func(id string, v []byte) uint16 {
		_, sw := txAll(t, c, 0xDB, 0x3F, 0xFF, append(append(hx("5C03"), hx(id)...), tlv(0x53, v)...))
		return sw
	}
	mustSW(t, put("5FC102", []byte{1}), swSecurityNotSatisfied)
	mustSW(t, mgmtAuth(t, c, algAES192, DefaultManagementKey), swOK)
	big := make([]byte, 3000)
	for i := range big {
		big[i] = byte(i)
	}
	mustSW(t, put("5FC105", big), swOK)
	mustSW(t, put("5FC10D", []byte("retired")), swOK)
	mustSW(t, put("5FC109", []byte("printed")), swOK)
	mustSW(t, put("5FC106", make([]byte, maxObjectSize+1)), swNoSpace)
	mustSW(t, put("5FC1FF", []byte{1}), swIncorrectData)

	// Response chaining with short APDUs.
	got, sw := txAll(t, c, 0xCB, 0x3F, 0xFF, hx("5C035FC105"))
	mustSW(t, sw, swOK)
	if !bytes.Equal(got, tlv(0x53, big)) {
		t.Fatal("object read back differs")
	}
	// Le honoured: 8 bytes then 61xx (OpenSC reads the length this way).
	resp, sw := tx(t, c, hx("00CB3FFF055C035FC10508"))
	if len(resp) != 8 || sw != 0x6100 {
		t.Fatalf("Le=8: %d bytes, %04x", len(resp), sw)
	}
	// Any other command drops the pending response.
	tx(t, c, hx("00FD0000"))
	_, sw = tx(t, c, hx("00C0000000"))
	mustSW(t, sw, swConditionsNotMet)
	// Extended APDU: everything at once.
	resp, sw = tx(t, c, hx("00CB3FFF0000055C035FC1050000"))
	mustSW(t, sw, swOK)
	if !bytes.Equal(resp, tlv(0x53, big)) {
		t.Fatal("extended read differs")
	}
	// Extended command data (no chaining).
	data := append(hx("5C035FC10A"), tlv(0x53, big[:1000])...)
	cmd := append([]byte{0x00, 0xDB, 0x3F, 0xFF, 0x00, byte(len(data) >> 8), byte(len(data))}, data...)
	_, sw = tx(t, c, cmd)
	mustSW(t, sw, swOK)

	// Printed information needs the PIN.
	_, sw = txAll(t, c, 0xCB, 0x3F, 0xFF, hx("5C035FC109"))
	mustSW(t, sw, swSecurityNotSatisfied)
	mustSW(t, verifyPIN(t, c, DefaultPIN), swOK)
	resp, sw = txAll(t, c, 0xCB, 0x3F, 0xFF, hx("5C035FC109"))
	mustSW(t, sw, swOK)
	if !bytes.Equal(resp, tlv(0x53, []byte("printed"))) {
		t.Fatalf("printed %x", resp)
	}
	// Delete with an empty 53; missing objects are not found.
	mustSW(t, put("5FC10D", nil), swOK)
	_, sw = txAll(t, c, 0xCB, 0x3F, 0xFF, hx("5C035FC10D"))
	mustSW(t, sw, swNotFound)
	_, sw = txAll(t, c, 0xCB, 0x3F, 0xFF, hx("5C027F61"))
	mustSW(t, sw, swNotFound)

	// A chain interrupted by another instruction is dropped.
	_, sw = tx(t, c, append(hx("10DB3FFF05"), hx("5C035FC102")...))
	mustSW(t, sw, swOK)
	_, sw = tx(t, c, hx("00FD0000"))
	mustSW(t, sw, swLastCmdExpected)
}

func TestResetAndRetries(t *testing.T) {
	c := newTestCard(t, Config{})
	// SET PIN RETRIES needs management key and PIN.
	_, sw := tx(t, c, hx("00FA0504"))
	mustSW(t, sw, swSecurityNotSatisfied)
	mustSW(t, mgmtAuth(t, c, algAES192, DefaultManagementKey), swOK)
	mustSW(t, verifyPIN(t, c, DefaultPIN), swOK)
	_, sw = tx(t, c, hx("00FA0504"))
	mustSW(t, sw, swOK)
	_, sw = tx(t, c, hx("0020008000"))
	mustSW(t, sw, 0x63C5)
	// Put a key and a certificate in.
	_, sw = txAll(t, c, 0x47, 0x00, 0x9A, hx("AC03800111"))
	mustSW(t, sw, swOK)
	_, sw = txAll(t, c, 0xDB, 0x3F, 0xFF, append(hx("5C035FC105"), tlv(0x53, []byte{1, 2, 3})...))
	mustSW(t, sw, swOK)
	// RESET refused while PIN or PUK works.
	_, sw = tx(t, c, hx("00FB0000"))
	mustSW(t, sw, swConditionsNotMet)
	for i := 0; i < 5; i++ {
		verifyPIN(t, c, "00000000")
	}
	_, sw = tx(t, c, hx("00FB0000"))
	mustSW(t, sw, swConditionsNotMet)
	for i := 0; i < 4; i++ {
		tx(t, c, append(hx("0024008110"), append(padPIN("00000000"), padPIN("00000000")...)...))
	}
	_, sw = tx(t, c, hx("00FB0000"))
	mustSW(t, sw, swOK)
	// Factory state, attestation key kept.
	_, sw = tx(t, c, hx("0020008000"))
	mustSW(t, sw, 0x63C3)
	mustSW(t, verifyPIN(t, c, DefaultPIN), swOK)
	_, sw = txAll(t, c, 0xF7, 0x00, 0x9A, nil)
	mustSW(t, sw, swRefNotFound)
	_, sw = txAll(t, c, 0xCB, 0x3F, 0xFF, hx("5C035FC105"))
	mustSW(t, sw, swNotFound)
	_, sw = txAll(t, c, 0xCB, 0x3F, 0xFF, hx("5C035FFF01"))
	mustSW(t, sw, swOK)
	_, sw = txAll(t, c, 0xF7, 0x00, 0xF9, nil)
	mustSW(t, sw, swOK)
	mustSW(t, mgmtAuth(t, c, algAES192, DefaultManagementKey), swOK)
}

func TestStateFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "yk.json")
	c := newTestCard(t, Config{StatePath: path, Serial: 777, FormFactor: FormFactorUSBCNano})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("state mode %v", fi.Mode())
	}
	mustSW(t, mgmtAuth(t, c, algAES192, DefaultManagementKey), swOK)
	pub, sw := txAll(t, c, 0x47, 0x00, 0x9D, hx("AC03800114"))
	mustSW(t, sw, swOK)

	// A second card from the file is the same card.
	c2 := newTestCard(t, Config{StatePath: path})
	if c2.Serial() != 777 {
		t.Fatalf("serial %d", c2.Serial())
	}
	md, sw := txAll(t, c2, 0xF7, 0x00, 0x9D, nil)
	mustSW(t, sw, swOK)
	items, _ := parseTLVs(md)
	if v, _ := findTLV(items, 0x04); !bytes.Equal(v, it0(t, pub)) {
		t.Fatal("reloaded key differs")
	}
	if !c2.AttestationRoot().Equal(c.AttestationRoot()) {
		t.Fatal("root differs")
	}
	// Mismatched serial or version is refused.
	if _, err := New(Config{StatePath: path, Serial: 778, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err == nil {
		t.Fatal("serial mismatch accepted")
	}
	if _, err := New(Config{StatePath: path, Version: [3]byte{5, 4, 3}}); err == nil {
		t.Fatal("version mismatch accepted")
	}
	// No temporary files left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("files in state dir: %v", ents)
	}
	// A corrupt file is an error, not a silent new card.
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{StatePath: path}); err == nil {
		t.Fatal("corrupt state accepted")
	}
}

func TestImportValidation(t *testing.T) {
	c := newTestCard(t, Config{})
	mustSW(t, mgmtAuth(t, c, algAES192, DefaultManagementKey), swOK)
	// EC scalar of the wrong size, RSA parts that do not fit.
	_, sw := txAll(t, c, 0xFE, 0x11, 0x9A, tlv(0x06, make([]byte, 40)))
	mustSW(t, sw, swIncorrectData)
	_, sw = txAll(t, c, 0xFE, 0x07, 0x9A, bytes.Join([][]byte{
		tlv(0x01, []byte{3}), tlv(0x02, []byte{5}), tlv(0x03, []byte{1}), tlv(0x04, []byte{1}), tlv(0x05, []byte{2})}, nil))
	mustSW(t, sw, swIncorrectData)
	// A good EC key, then ATTEST refuses it (imported).
	d := sha256.Sum256([]byte("key"))
	_, sw = txAll(t, c, 0xFE, 0x11, 0x9A, append(tlv(0x06, d[:]), hx("AA0101AB0101")...))
	mustSW(t, sw, swOK)
	_, sw = txAll(t, c, 0xF9, 0x9A, 0x00, nil)
	mustSW(t, sw, swIncorrectData)
	md, sw := txAll(t, c, 0xF7, 0x00, 0x9A, nil)
	mustSW(t, sw, swOK)
	items, _ := parseTLVs(md)
	if v, _ := findTLV(items, 0x03); !bytes.Equal(v, []byte{originImported}) {
		t.Fatalf("origin %x", v)
	}
	// PIN policy never: signs without the PIN.
	digest := sha256.Sum256([]byte("x"))
	_, sw = txAll(t, c, 0x87, 0x11, 0x9A, tlv(0x7C, []byte{0x82, 0x00}, tlv(0x81, digest[:])))
	mustSW(t, sw, swOK)
}
