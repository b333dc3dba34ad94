// Package config reads the appliance configuration (/etc/iot-hsm/config.toml).
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/iot-hsm/iot-hsm/mqtt"
)

// Config is the whole configuration file. docs/configuration.md documents every field
// or links the page that does.
type Config struct {
	DeviceID    string   `toml:"device_id"`
	StateDir    string   `toml:"state_dir"`
	LogLevel    string   `toml:"log_level"`
	TopicRoot   string   `toml:"topic_root"`
	QueueSize   int      `toml:"queue_size"`
	AllowDigest bool     `toml:"allow_digest"`
	MQTT        MQTT     `toml:"mqtt"`
	PKCS11      []PKCS11 `toml:"pkcs11"`
	YubiKey     YubiKey  `toml:"yubikey"`
	Service     Service  `toml:"service"`
	LEDs        LEDs     `toml:"leds"`
	Trust       Trust    `toml:"trust"`
	Secrets     Secrets  `toml:"secrets"`
	OTA         OTA      `toml:"ota"`
	Web         Web      `toml:"web"`
	Fleet       Fleet    `toml:"fleet"`

	CloudKMS []CloudKMS `toml:"cloudkms"` // one block per key ring; see cloudkms.go
}

// YubiKey configures the PIV backend (YubiKeys through pcscd).
type YubiKey struct {
	// Disabled turns the backend off (no pcscd on this machine).
	Disabled bool `toml:"disabled"`
	// PIN or PINFile: the PIN of every YubiKey not listed under cards.
	PIN     string `toml:"pin"`
	PINFile string `toml:"pin_file"`
	// ManagementKeyFile holds an explicit management key in hex. Without it the
	// PIN-protected management key stored on the card is used.
	ManagementKeyFile string `toml:"management_key_file"`
	// AllowDefaults lets the appliance use the factory PIN and management key.
	AllowDefaults bool `toml:"allow_defaults"`
	// AttestationRoots is a PEM bundle of attestation roots; default Yubico's.
	AttestationRoots string        `toml:"attestation_roots"`
	Cards            []YubiKeyCard `toml:"card"`
	// Hotplug, when false, turns off the watch of USB and PC/SC events: plugged and
	// pulled tokens are then seen by the periodic scan only. Default true.
	Hotplug *bool `toml:"hotplug"`
}

// HotplugOn is whether USB and PC/SC events trigger a rescan (hotplug unset or true).
func (y YubiKey) HotplugOn() bool { return y.Hotplug == nil || *y.Hotplug }

// YubiKeyCard is the configuration of one YubiKey, by serial.
type YubiKeyCard struct {
	Serial            uint32 `toml:"serial"`
	PIN               string `toml:"pin"`
	PINFile           string `toml:"pin_file"`
	ManagementKeyFile string `toml:"management_key_file"`
	AllowDefaults     bool   `toml:"allow_defaults"`
}

// MQTT is the broker session. Without a broker the daemon refuses to start unless
// it runs in development mode (--dev, or DevBroker): then it runs an embedded broker,
// with no authentication, on EmbeddedListen, which must be a loopback address.
type MQTT struct {
	Broker         string `toml:"broker"` // ssl://host:8883, tcp://host:1883
	DevBroker      bool   `toml:"dev_broker"`
	ClientID       string `toml:"client_id"`
	Username       string `toml:"username"`
	Password       string `toml:"password"`
	PasswordFile   string `toml:"password_file"`
	CAFile         string `toml:"ca_file"`
	CertFile       string `toml:"cert_file"`
	KeyFile        string `toml:"key_file"`
	AllowPlaintext bool   `toml:"allow_plaintext"`
	EmbeddedListen string `toml:"embedded_listen"`
}

// PKCS11 is one PKCS#11 module and, optionally, which of its tokens to use and their PIN.
type PKCS11 struct {
	Module string `toml:"module"`
	// Token is an RFC 7512 URI selecting tokens (pkcs11:token=ca;serial=...); empty
	// means every initialised token of the module.
	Token   string `toml:"token"`
	PIN     string `toml:"pin"`
	PINFile string `toml:"pin_file"`
}

// Defaults used when the file leaves a field out.
const (
	DefaultStateDir       = "/var/lib/iot-hsm"
	DefaultLogLevel       = "info"
	DefaultTopicRoot      = "iot-hsm"
	DefaultQueueSize      = 16
	DefaultEmbeddedListen = "127.0.0.1:1883"
)

// Default is the configuration of an empty file.
func Default() *Config {
	c := &Config{}
	c.applyDefaults()
	return c
}

// ErrInvalid marks a configuration that cannot be used; the message names the field.
var ErrInvalid = errors.New("invalid configuration")

// ErrNoBroker (with ErrInvalid): no broker configured outside development mode. The
// embedded broker lets anyone who reaches it sign and destroy keys.
var ErrNoBroker = errors.New("no MQTT broker configured")

// ErrNotLoopback (with ErrInvalid): the embedded broker asked to listen beyond loopback.
var ErrNotLoopback = errors.New("the embedded broker listens on loopback only")

// Load reads and checks the file at path. Unknown keys are errors: a misspelt key
// would otherwise silently leave a default in place on a CA appliance.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	c, err := Parse(data)
	if err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse reads a configuration from TOML text.
func Parse(data []byte) (*Config, error) {
	if err := checkShapes(data); err != nil {
		return nil, err
	}
	var c Config
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&c)
	if err != nil {
		return nil, decodeError(err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("%w: unknown keys: %s", ErrInvalid, strings.Join(keys, ", "))
	}
	c.applyDefaults()
	return &c, c.check()
}

func (c *Config) applyDefaults() {
	c.Service.applyDefaults()
	c.LEDs.applyDefaults()
	c.Fleet.applyDefaults()
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.LogLevel == "" {
		c.LogLevel = DefaultLogLevel
	}
	if c.TopicRoot == "" {
		c.TopicRoot = DefaultTopicRoot
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.MQTT.Broker == "" && c.MQTT.EmbeddedListen == "" {
		c.MQTT.EmbeddedListen = DefaultEmbeddedListen
	}
}

func (c *Config) check() error {
	if err := c.Service.check(); err != nil {
		return err
	}
	if err := c.LEDs.check(); err != nil {
		return err
	}
	if err := c.Fleet.check(); err != nil {
		return err
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%w: log_level %q (want debug, info, warn or error)", ErrInvalid, c.LogLevel)
	}
	if c.QueueSize < 1 || c.QueueSize > 4096 {
		return fmt.Errorf("%w: queue_size %d (want 1..4096)", ErrInvalid, c.QueueSize)
	}
	if !validLevel(c.TopicRoot) {
		return fmt.Errorf("%w: topic_root %q must be one topic level without / + #", ErrInvalid, c.TopicRoot)
	}
	if c.DeviceID != "" && !validLevel(c.DeviceID) {
		return fmt.Errorf("%w: device_id %q must be one topic level without / + #", ErrInvalid, c.DeviceID)
	}
	if c.MQTT.Password != "" && c.MQTT.PasswordFile != "" {
		return fmt.Errorf("%w: mqtt: set password or password_file, not both", ErrInvalid)
	}
	if (c.MQTT.CertFile == "") != (c.MQTT.KeyFile == "") {
		return fmt.Errorf("%w: mqtt: cert_file and key_file go together", ErrInvalid)
	}
	if c.MQTT.Broker != "" {
		if err := mqtt.CheckBroker(c.MQTT.Broker); err != nil {
			return fmt.Errorf("%w: mqtt.broker: %w", ErrInvalid, err)
		}
	}
	if c.MQTT.DevBroker && c.MQTT.Broker != "" {
		return fmt.Errorf("%w: mqtt: set broker or dev_broker, not both", ErrInvalid)
	}
	if c.MQTT.EmbeddedListen != "" {
		if err := CheckEmbeddedListen(c.MQTT.EmbeddedListen); err != nil {
			return err
		}
	}
	if c.YubiKey.PIN != "" && c.YubiKey.PINFile != "" {
		return fmt.Errorf("%w: yubikey: set pin or pin_file, not both", ErrInvalid)
	}
	for i, card := range c.YubiKey.Cards {
		if card.Serial == 0 {
			return fmt.Errorf("%w: yubikey.card[%d]: serial is required", ErrInvalid, i)
		}
		if card.PIN != "" && card.PINFile != "" {
			return fmt.Errorf("%w: yubikey.card[%d]: set pin or pin_file, not both", ErrInvalid, i)
		}
	}
	for i, p := range c.PKCS11 {
		if p.Module == "" {
			return fmt.Errorf("%w: pkcs11[%d]: module is required", ErrInvalid, i)
		}
		if p.PIN != "" && p.PINFile != "" {
			return fmt.Errorf("%w: pkcs11[%d]: set pin or pin_file, not both", ErrInvalid, i)
		}
	}
	if err := c.checkCloudKMS(); err != nil {
		return err
	}
	if _, err := c.Web.Effective(); err != nil {
		return err
	}
	return nil
}

// CheckBroker refuses a configuration without a broker unless the daemon runs in
// development mode (dev: the --dev flag; or [mqtt] dev_broker).
func (c *Config) CheckBroker(dev bool) error {
	if c.MQTT.Broker != "" || dev || c.MQTT.DevBroker {
		return nil
	}
	return fmt.Errorf("%w: %w: set [mqtt] broker = \"mqtts://HOST:8883\" with ca_file, cert_file and key_file "+
		"(docs/configuration.md), or run with --dev (or [mqtt] dev_broker = true) for a development setup: "+
		"the embedded broker on loopback, without authentication", ErrInvalid, ErrNoBroker)
}

// CheckEmbeddedListen accepts host:port with a loopback host (127.0.0.0/8, ::1,
// localhost): the embedded broker authenticates nobody, so nothing beyond this
// machine may reach it.
func CheckEmbeddedListen(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: mqtt.embedded_listen %q: %v", ErrInvalid, addr, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%w: %w: mqtt.embedded_listen %q (it authenticates nobody; use 127.0.0.1:PORT, "+
		"and a real broker with TLS for anything beyond this machine)", ErrInvalid, ErrNotLoopback, addr)
}

// ReadPIN returns the PIN of a PKCS#11 entry: inline, or the first line of pin_file.
// An empty result means no PIN is configured.
func (p PKCS11) ReadPIN() (string, error) {
	if p.PINFile == "" {
		return p.PIN, nil
	}
	data, err := os.ReadFile(p.PINFile)
	if err != nil {
		return "", fmt.Errorf("%w: pin_file: %v", ErrInvalid, err)
	}
	pin, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSpace(pin), nil
}

func validLevel(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/+#\x00") && !strings.HasPrefix(s, "$")
}

// ReadPassword returns the broker password: inline, or the first line of password_file.
func (m MQTT) ReadPassword() (string, error) {
	if m.PasswordFile == "" {
		return m.Password, nil
	}
	data, err := os.ReadFile(m.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("%w: mqtt.password_file: %v", ErrInvalid, err)
	}
	pw, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSpace(pw), nil
}

// ReadSecret returns an inline secret or the first line of its file ("" when neither
// is set). field names the setting in errors; the secret itself never appears.
func ReadSecret(field, inline, file string) (string, error) {
	if file == "" {
		return inline, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrInvalid, field, err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSpace(line), nil
}
