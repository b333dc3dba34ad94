// Package vyubikey is a virtual YubiKey 5: the PIV card application (with Yubico's
// extensions), enough of the management and OTP applications for clients that
// probe them, and the connection to vsmartcard's virtual reader (vpcd) that
// makes it a card in pcscd. It is for tests and demos on machines without a
// YubiKey; clients (piv-go, yubico-piv-tool, OpenSC) talk to it through pcscd as
// they would to a real key.
//
// The card's state (keys, certificates and other objects, PIN, PUK, retry
// counters, management key, the attestation CA) is a JSON file, rewritten
// atomically after every change, so keys survive an unplug (disconnect from
// vpcd) and a replug (Connect again), and process restarts.
package vyubikey

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultVPCDAddr is where vpcd listens for the first virtual reader
// ("Virtual PCD 00 00"); the second ("Virtual PCD 00 01") is on port 35964.
const DefaultVPCDAddr = "localhost:35963"

// Factory defaults.
var (
	DefaultPIN           = "123456"
	DefaultPUK           = "12345678"
	DefaultManagementKey = []byte{
		0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
		0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
		0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
	}
	DefaultSerial  uint32 = 12345678
	DefaultVersion        = [3]byte{5, 7, 1}
)

// ATR is the answer to reset of a YubiKey 5 over USB CCID (T=1; historical
// bytes carry "YubiKey"), the one yubico-piv-tool and OpenSC recognise.
var ATR = []byte{0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15, 0x80, 0x73,
	0xC0, 0x21, 0xC0, 0x57, 0x59, 0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0x40}

// Form factors (yubikey-manager's values).
const (
	FormFactorUSBAKeychain byte = 0x01
	FormFactorUSBANano     byte = 0x02
	FormFactorUSBCKeychain byte = 0x03
	FormFactorUSBCNano     byte = 0x04
)

// Config describes a virtual YubiKey. Serial, Version and FormFactor are used
// when the state file is created; an existing state file keeps its own, and a
// non-zero value that disagrees with it is an error.
type Config struct {
	Serial     uint32  // default 12345678
	Version    [3]byte // firmware; default 5.7.1
	StatePath  string  // JSON state file; created if missing (required)
	FormFactor byte    // default USB-A keychain

	// ManagementKeyAlgorithm is the algorithm of the factory-default management
	// key (the value is always 0102..08): 0 means what the firmware does, AES-192
	// from 5.7 and 3DES before. Set alg 0x03 (3DES) for clients that only speak
	// 3DES (yubico-piv-tool before 2.3). Used at creation and on RESET.
	ManagementKeyAlgorithm byte

	// Logger receives the card's log (commands and status words, never PINs,
	// keys or data). Default slog.Default().
	Logger *slog.Logger
}

// Card is one virtual YubiKey. It is safe for concurrent use; commands are
// processed one at a time.
type Card struct {
	cfg Config
	log *slog.Logger

	mu   sync.Mutex
	st   *persistent
	sess session

	connMu    sync.Mutex
	conn      connCloser
	unplugged bool

	latency atomic.Int64 // extra time per APDU, for tests that need a slow card
	// signLatency is extra time per GENERAL AUTHENTICATE (a signature), like a real
	// card's tens of milliseconds, for the benchmarks.
	signLatency atomic.Int64
	apdus       [256]atomic.Uint64 // command APDUs received, by INS
}

// SetSignLatency makes every signature (GENERAL AUTHENTICATE, its last chained part)
// take d longer, as a real card's private-key operation does.
func (c *Card) SetSignLatency(d time.Duration) { c.signLatency.Store(int64(d)) }

// APDUs is the number of command APDUs with instruction ins received so far.
func (c *Card) APDUs(ins byte) uint64 { return c.apdus[ins].Load() }

// SetLatency makes every APDU take d longer, like a real card's crypto does: tests
// use it to keep an operation in flight while they pull the card.
func (c *Card) SetLatency(d time.Duration) { c.latency.Store(int64(d)) }

type connCloser interface{ Close() error }

// application selected in the session.
type application int

const (
	appNone application = iota
	appPIV
	appManagement
	appOTP
)

// session is what a YubiKey forgets on power off, reset or deselecting PIV.
type session struct {
	app         application
	pinVerified bool
	pinFresh    bool // PIN verified and not yet used by a PIN-always key
	mgmtAuthed  bool
	witness     []byte // management key witness awaiting the client's answer
	challenge   []byte // challenge handed out with 7C 02 81 00
	chainHdr    [4]byte
	chain       []byte // command chaining accumulator
	chaining    bool
	pending     []byte // response data waiting for GET RESPONSE
}

// New loads the card from cfg.StatePath or, if the file does not exist,
// initialises a factory-fresh card (PIN 123456, PUK 12345678, retries 3/3,
// management key 0102...08, a new attestation CA and f9 key) and writes it.
func New(cfg Config) (*Card, error) {
	if cfg.StatePath == "" {
		return nil, errors.New("vyubikey: Config.StatePath is required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	st, ok, err := loadState(cfg.StatePath)
	if err != nil {
		return nil, fmt.Errorf("vyubikey: %w", err)
	}
	if ok {
		if cfg.Serial != 0 && cfg.Serial != st.Serial {
			return nil, fmt.Errorf("vyubikey: %s holds serial %d, not %d", cfg.StatePath, st.Serial, cfg.Serial)
		}
		if cfg.Version != ([3]byte{}) && cfg.Version != st.Version {
			return nil, fmt.Errorf("vyubikey: %s holds firmware %d.%d.%d, not %d.%d.%d", cfg.StatePath,
				st.Version[0], st.Version[1], st.Version[2], cfg.Version[0], cfg.Version[1], cfg.Version[2])
		}
	} else {
		if st, err = factoryState(cfg); err != nil {
			return nil, fmt.Errorf("vyubikey: initialising: %w", err)
		}
		if err := saveState(cfg.StatePath, st); err != nil {
			return nil, fmt.Errorf("vyubikey: writing state: %w", err)
		}
		log.Info("vyubikey: new card", "serial", st.Serial, "state", cfg.StatePath)
	}
	c := &Card{cfg: cfg, log: log.With("serial", st.Serial), st: st}
	c.resetSession()
	return c, nil
}

func factoryState(cfg Config) (*persistent, error) {
	st := &persistent{
		Format:     stateFormat,
		Serial:     cfg.Serial,
		Version:    cfg.Version,
		FormFactor: cfg.FormFactor,
		Keys:       map[string]*keyRecord{},
		Objects:    map[string][]byte{},
	}
	if st.Serial == 0 {
		st.Serial = DefaultSerial
	}
	if st.Version == ([3]byte{}) {
		st.Version = DefaultVersion
	}
	if st.FormFactor == 0 {
		st.FormFactor = FormFactorUSBAKeychain
	}
	rootKey, rootCert, f9Key, f9Cert, err := newAttestationCA(st.Serial)
	if err != nil {
		return nil, err
	}
	st.RootKey, st.RootCert = rootKey, rootCert
	st.Keys["f9"] = &keyRecord{Alg: algRSA2048, PINPolicy: pinPolicyNever, TouchPolicy: touchPolicyNever,
		Origin: originImported, PKCS8: f9Key}
	st.Objects["5fff01"] = certObject(f9Cert)
	resetCredentials(st, cfg.ManagementKeyAlgorithm)
	return st, nil
}

// resetCredentials sets PIN, PUK, retries and management key to the defaults.
func resetCredentials(st *persistent, mgmtAlg byte) {
	st.PIN = padPIN(DefaultPIN)
	st.PUK = padPIN(DefaultPUK)
	st.PINRetriesMax, st.PINRetriesLeft = 3, 3
	st.PUKRetriesMax, st.PUKRetriesLeft = 3, 3
	if mgmtAlg == 0 {
		mgmtAlg = alg3DES
		if atLeast(st.Version, 5, 7, 0) {
			mgmtAlg = algAES192
		}
	}
	st.MgmtAlg = mgmtAlg
	st.MgmtKey = bytes.Clone(DefaultManagementKey)
	st.MgmtTouch = touchPolicyNever
}

func padPIN(pin string) []byte {
	b := bytes.Repeat([]byte{0xFF}, 8)
	copy(b, pin)
	return b
}

// Serial is the card's serial number.
func (c *Card) Serial() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Serial
}

// StatePath is the card's state file.
func (c *Card) StatePath() string { return c.cfg.StatePath }

// Version is the card's firmware version.
func (c *Card) Version() [3]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Version
}

// AttestationRoot is the root CA the card's f9 attestation certificate chains
// to. Attestations verify with piv.Verifier{Roots: pool-with-this}; piv-go's
// package-level piv.Verify only trusts Yubico's real roots.
func (c *Card) AttestationRoot() *x509.Certificate {
	c.mu.Lock()
	der := bytes.Clone(c.st.RootCert)
	c.mu.Unlock()
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic("vyubikey: stored root certificate: " + err.Error())
	}
	return cert
}

// resetSession forgets everything volatile: called on insertion, power off,
// reset. PIV is the application selected after reset (NIST SP 800-73-4 wants it
// as the default application).
func (c *Card) resetSession() {
	c.sess = session{app: appPIV}
}

// save writes the state; callers hold c.mu. A failure is logged and reported
// to the client as a memory failure.
func (c *Card) save() uint16 {
	if err := saveState(c.cfg.StatePath, c.st); err != nil {
		c.log.Error("vyubikey: saving state", "err", err)
		return swMemoryFailure
	}
	return swOK
}

// HandleAPDU processes one command APDU and returns the response APDU (data
// followed by SW1 SW2). It implements command chaining (CLA bit 0x10) and
// response chaining (61xx, GET RESPONSE), short and extended lengths.
func (c *Card) HandleAPDU(apdu []byte) []byte {
	if d := time.Duration(c.latency.Load()); d > 0 {
		time.Sleep(d)
	}
	if len(apdu) >= 2 {
		c.apdus[apdu[1]].Add(1)
		// The card's signature time, once per signature: on the last part of a chain.
		if d := time.Duration(c.signLatency.Load()); d > 0 && apdu[1] == insAuthenticate && apdu[0]&0x10 == 0 {
			time.Sleep(d)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	resp := c.handleLocked(apdu)
	if len(apdu) >= 2 && len(resp) >= 2 {
		sw := uint16(resp[len(resp)-2])<<8 | uint16(resp[len(resp)-1])
		c.log.Debug("vyubikey: apdu", "cla", fmt.Sprintf("%02x", apdu[0]), "ins", fmt.Sprintf("%02x", apdu[1]),
			"p1p2", fmt.Sprintf("%x", apdu[2:min(4, len(apdu))]), "in", len(apdu),
			"sw", fmt.Sprintf("%04x", sw), "out", len(resp)-2)
	}
	return resp
}

func (c *Card) handleLocked(raw []byte) []byte {
	cmd, sw := parseCommand(raw)
	if sw != 0 {
		c.sess.pending = nil
		c.sess.chaining = false
		return swBytes(sw)
	}
	if cmd.cla&^0x10 != 0 {
		// No secure messaging, no logical channels.
		return swBytes(swClaNotSupported)
	}

	// GET RESPONSE continues the pending response.
	if cmd.ins == 0xC0 && !c.sess.chaining {
		if c.sess.pending == nil {
			return swBytes(swConditionsNotMet)
		}
		data := c.sess.pending
		c.sess.pending = nil
		return c.chunk(cmd, data)
	}
	c.sess.pending = nil

	// Command chaining: collect the data of CLA 0x10 commands.
	hdr := [4]byte{0, cmd.ins, cmd.p1, cmd.p2}
	if c.sess.chaining && c.sess.chainHdr != hdr {
		c.sess.chaining = false
		c.sess.chain = nil
		if cmd.cla&0x10 == 0 {
			return swBytes(swLastCmdExpected)
		}
	}
	if cmd.cla&0x10 != 0 {
		if !c.sess.chaining {
			c.sess.chaining = true
			c.sess.chainHdr = hdr
			c.sess.chain = nil
		}
		if len(c.sess.chain)+len(cmd.data) > maxCommandData {
			c.sess.chaining = false
			c.sess.chain = nil
			return swBytes(swWrongLength)
		}
		c.sess.chain = append(c.sess.chain, cmd.data...)
		return swBytes(swOK)
	}
	if c.sess.chaining {
		cmd.data = append(c.sess.chain, cmd.data...)
		c.sess.chaining = false
		c.sess.chain = nil
		if len(cmd.data) > maxCommandData {
			return swBytes(swWrongLength)
		}
	}

	data, sw := c.dispatch(cmd)
	if sw != swOK {
		return swBytes(sw)
	}
	return c.chunk(cmd, data)
}

// maxCommandData bounds a chained command (the largest is a certificate object
// of 3 kB or an RSA-4096 import).
const maxCommandData = 16 * 1024

// chunk sends as much of data as the command's Ne allows (at most 256 bytes for
// a short APDU) and keeps the rest for GET RESPONSE, announced by 61xx.
func (c *Card) chunk(cmd command, data []byte) []byte {
	limit := cmd.ne
	if !cmd.extended && limit > 256 {
		limit = 256
	}
	if limit > 0xFFFF-2 { // what one vpcd message can carry
		limit = 0xFFFF - 2
	}
	if len(data) <= limit {
		return withSW(data, swOK)
	}
	rest := data[limit:]
	c.sess.pending = rest
	n := len(rest)
	if n > 255 {
		n = 0
	}
	return withSW(data[:limit], swMoreData|uint16(n))
}

// dispatch routes a complete command to the selected application.
func (c *Card) dispatch(cmd command) ([]byte, uint16) {
	if cmd.ins == 0xA4 {
		return c.selectApp(cmd)
	}
	switch c.sess.app {
	case appPIV:
		return c.piv(cmd)
	case appManagement:
		return c.management(cmd)
	case appOTP:
		return c.otp(cmd)
	}
	return nil, swInsNotSupported
}
