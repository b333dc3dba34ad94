package web

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Errors of the password file.
var (
	// ErrNoPassword: no password is set yet (iot-hsm web passwd, or the first
	// visit from this machine).
	ErrNoPassword = errors.New("no dashboard password is set")
	// ErrWeakPassword: a new password shorter than MinPasswordLen.
	ErrWeakPassword = errors.New("the password is too short")
	// ErrBadPassword: the password does not match.
	ErrBadPassword = errors.New("wrong password")
)

// MinPasswordLen is the shortest password accepted.
const MinPasswordLen = 10

// argon2id parameters: the lower of OWASP's recommendations (19 MiB, 2 passes), so
// that a Raspberry Pi checks a login in well under a second.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024
	argonThreads = 1
	argonKeyLen  = 32
)

// PasswordFile is where the hash of the dashboard password is kept in dir.
func PasswordFile(dir string) string { return filepath.Join(dir, "password") }

// SetPassword stores the argon2id hash of password in dir; the password itself is
// never written.
func SetPassword(dir, password string) error {
	if len(password) < MinPasswordLen {
		return fmt.Errorf("%w: at least %d characters", ErrWeakPassword, MinPasswordLen)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("web: %w", err)
	}
	salt := make([]byte, 16)
	rand.Read(salt)
	sum := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	enc := base64.RawStdEncoding
	line := fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s\n", argon2.Version, argonMemory, argonTime, argonThreads,
		enc.EncodeToString(salt), enc.EncodeToString(sum))
	return writeFileSync(PasswordFile(dir), []byte(line), 0o600)
}

// HasPassword reports whether a password is set in dir.
func HasPassword(dir string) bool {
	_, err := os.Stat(PasswordFile(dir))
	return err == nil
}

// CheckPassword compares password with the hash stored in dir.
func CheckPassword(dir, password string) error {
	data, err := os.ReadFile(PasswordFile(dir))
	if errors.Is(err, os.ErrNotExist) {
		return ErrNoPassword
	}
	if err != nil {
		return fmt.Errorf("web: %w", err)
	}
	var version, m, t, p int
	parts := strings.Split(strings.TrimSpace(string(data)), "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return fmt.Errorf("web: %s is not an argon2id hash", PasswordFile(dir))
	}
	if _, err := fmt.Sscanf(parts[2]+" "+parts[3], "v=%d m=%d,t=%d,p=%d", &version, &m, &t, &p); err != nil || p < 1 || p > 255 {
		return fmt.Errorf("web: %s: unreadable parameters", PasswordFile(dir))
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	want, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return fmt.Errorf("web: %s: unreadable hash", PasswordFile(dir))
	}
	got := argon2.IDKey([]byte(password), salt, uint32(t), uint32(m), uint8(p), uint32(len(want)))
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return ErrBadPassword
	}
	return nil
}
