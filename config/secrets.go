package config

// Secrets configures the PINs stored at rest (hsm.set_pin with persist): they are
// sealed in <state_dir>/secrets.enc with a key kept in KeyFile. docs/security.md
// ("Secrets at rest") says what this protects and what it does not.
//
//	[secrets]
//	key_file = "/etc/iot-hsm/secrets.key"   # default; created 0600 on first use
type Secrets struct {
	// KeyFile holds the 32-byte key that seals the stored PINs. It must not be
	// inside the state directory (refused at start): a copy of that directory
	// would then carry the key with the PINs.
	KeyFile string `toml:"key_file"`
}

// DefaultSecretsKeyFile is the key file unless [secrets] key_file names another.
const DefaultSecretsKeyFile = "/etc/iot-hsm/secrets.key"

// Key returns the key file to use.
func (s Secrets) Key() string {
	if s.KeyFile == "" {
		return DefaultSecretsKeyFile
	}
	return s.KeyFile
}
