// Package secrets keeps the PINs an operator asked the appliance to remember
// (hsm.set_pin with persist) so that it can unlock its tokens after a restart
// without the operator.
//
// Two files, both 0600:
//
//   - the key file (default /etc/iot-hsm/secrets.key): 32 random bytes, created on
//     first use. It is the only thing that opens the sealed file, and it lives outside
//     the state directory so that a copy of the state directory (a backup, a stolen
//     data partition) does not carry it.
//   - the sealed file (<state_dir>/secrets.enc): one entry per HSM id, each the PIN
//     sealed with AES-256-GCM under the key, a fresh random nonce per entry, and
//     associated data naming the HSM id, so that an entry moved to another HSM's
//     name does not open. The file names the key it was sealed with by a hash (key
//     id), so a wrong key file is told apart from a damaged file.
//
// The sealed file is replaced atomically (temporary file, fsync, rename, fsync of the
// directory): a crash leaves the old file or the new one, never a mix.
//
// What this protects, and what it does not, is written down in docs/security.md
// ("Secrets at rest"): whoever holds both files holds the PINs.
package secrets

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/iot-hsm/iot-hsm/internal/atomicfile"
)

// Defaults.
const (
	// DefaultKeyFile is where the key lives unless [secrets] key_file says otherwise.
	DefaultKeyFile = "/etc/iot-hsm/secrets.key"
	// SealedName is the sealed file's name in the state directory.
	SealedName = "secrets.enc"
)

// Typed errors (errors.Is). None of them ever carries a PIN.
var (
	// ErrKeyFile: the key file is unusable: missing while stored PINs need it,
	// not 32 bytes (or 64 hex digits), readable by group or others, or unreadable.
	ErrKeyFile = errors.New("secrets: key file unusable")
	// ErrWrongKey: the key file is not the key the sealed file was made with.
	// Nothing is opened with it, and nothing is stored with it until it is fixed.
	ErrWrongKey = errors.New("secrets: the key file does not open the sealed file")
	// ErrTampered: the sealed file does not parse, or an entry fails its
	// authentication (changed, truncated, or moved to another HSM id).
	ErrTampered = errors.New("secrets: sealed file damaged or tampered with")
)

const (
	format   = "iot-hsm-secrets-v1"
	keyLen   = 32
	padBlock = 64 // PINs are padded to a multiple of this, so the file hides their length
)

// sealedFile is the on-disk form (JSON).
type sealedFile struct {
	Format  string           `json:"format"`
	KeyID   string           `json:"key_id"`
	Entries map[string]entry `json:"entries"`
}

type entry struct {
	Nonce  string `json:"nonce"`  // base64, 12 bytes
	Sealed string `json:"sealed"` // base64, AES-256-GCM ciphertext and tag
}

// Store is the pair of files. It holds no PIN and no key in memory between calls:
// each call reads what it needs. Safe for concurrent use within one process.
type Store struct {
	keyFile string
	path    string
	mu      sync.Mutex
}

// New returns the store over keyFile and <stateDir>/secrets.enc; nothing is read or
// created yet. A key file inside the state directory is refused: a copy of that
// directory would then carry the key next to the PINs.
func New(keyFile, stateDir string) (*Store, error) {
	if keyFile == "" {
		keyFile = DefaultKeyFile
	}
	kabs, err := filepath.Abs(keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	sabs, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("secrets: state directory: %v", err)
	}
	if rel, err := filepath.Rel(sabs, kabs); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return nil, fmt.Errorf("%w: %s is inside the state directory %s; keep it elsewhere (a copy of the state directory would carry the key with the PINs)",
			ErrKeyFile, keyFile, stateDir)
	}
	return &Store{keyFile: kabs, path: filepath.Join(sabs, SealedName)}, nil
}

// KeyFile returns the key file's path.
func (s *Store) KeyFile() string { return s.keyFile }

// Path returns the sealed file's path.
func (s *Store) Path() string { return s.path }

// Save seals pin for hsmID, replacing an earlier entry. The key file is created
// (0600) when neither it nor any stored entry exists yet; a missing key file with
// entries stored is ErrKeyFile, a key that does not match them ErrWrongKey: a new
// key is never made over PINs sealed with the old one.
func (s *Store) Save(hsmID, pin string) error {
	if hsmID == "" || pin == "" {
		return errors.New("secrets: an HSM id and a PIN are required")
	}
	if len(pin) > 0xffff-2 {
		return errors.New("secrets: PIN too long")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := s.read()
	if err != nil {
		return err
	}
	key, err := s.readKey()
	if errors.Is(err, fs.ErrNotExist) {
		if len(f.Entries) > 0 {
			return fmt.Errorf("%w: %s is missing and %s holds PINs sealed with it; restore the key file, or remove the sealed file and set the PINs again",
				ErrKeyFile, s.keyFile, s.path)
		}
		key, err = s.createKey()
	}
	if err != nil {
		return err
	}
	defer wipe(key)
	id := keyID(key)
	switch {
	case len(f.Entries) == 0:
		f.KeyID = id
	case f.KeyID != id:
		return fmt.Errorf("%w: %s (key file %s); restore the key file, or remove the sealed file and set the PINs again",
			ErrWrongKey, s.path, s.keyFile)
	}
	e, err := seal(key, hsmID, pin)
	if err != nil {
		return err
	}
	f.Entries[hsmID] = e
	return s.write(f)
}

// Delete removes hsmID's entry. It needs no key; a missing entry or file is no error.
func (s *Store) Delete(hsmID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := s.read()
	if err != nil {
		return err
	}
	if _, ok := f.Entries[hsmID]; !ok {
		return nil
	}
	delete(f.Entries, hsmID)
	return s.write(f)
}

// IDs returns the HSM ids that have a stored PIN, without opening anything.
func (s *Store) IDs() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := s.read()
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(f.Entries))
	for id := range f.Entries {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

// Load opens every entry: all of them or none. A missing sealed file is an empty
// result; a wrong key file is ErrWrongKey (or ErrKeyFile when it is missing or
// unusable), a damaged entry ErrTampered.
func (s *Store) Load() (map[string]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := s.read()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	if len(f.Entries) == 0 {
		return out, nil
	}
	key, err := s.readKey()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s is missing; the PINs in %s cannot be opened without it", ErrKeyFile, s.keyFile, s.path)
	}
	if err != nil {
		return nil, err
	}
	defer wipe(key)
	if f.KeyID != keyID(key) {
		return nil, fmt.Errorf("%w: %s (key file %s)", ErrWrongKey, s.path, s.keyFile)
	}
	for id, e := range f.Entries {
		pin, err := open(key, id, e)
		if err != nil {
			return nil, err
		}
		out[id] = pin
	}
	return out, nil
}

// read parses the sealed file; a missing file is an empty one (s.mu held).
func (s *Store) read() (*sealedFile, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return &sealedFile{Format: format, Entries: map[string]entry{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secrets: %v", err)
	}
	var f sealedFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil || f.Format != format {
		return nil, fmt.Errorf("%w: %s is not a %s file", ErrTampered, s.path, format)
	}
	if f.Entries == nil {
		f.Entries = map[string]entry{}
	}
	return &f, nil
}

// write replaces the sealed file atomically and durably (s.mu held).
func (s *Store) write(f *sealedFile) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("secrets: %v", err)
	}
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("secrets: %v", err)
	}
	if err := atomicfile.Write(s.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("secrets: writing %s: %v", s.path, err)
	}
	return nil
}

// readKey reads the key file: 32 raw bytes, or 64 hex digits and an optional
// newline. A file that group or others may read is refused.
func (s *Store) readKey() ([]byte, error) {
	fi, err := os.Stat(s.keyFile)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrKeyFile, s.keyFile)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %v; it must be readable by its owner only (chmod 600)", ErrKeyFile, s.keyFile, fi.Mode().Perm())
	}
	data, err := os.ReadFile(s.keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	defer wipe(data)
	switch {
	case len(data) == keyLen:
		return append([]byte(nil), data...), nil
	case len(bytes.TrimSpace(data)) == 2*keyLen:
		key := make([]byte, keyLen)
		if _, err := hex.Decode(key, bytes.TrimSpace(data)); err == nil {
			return key, nil
		}
	}
	return nil, fmt.Errorf("%w: %s must hold 32 bytes (raw, or 64 hex digits)", ErrKeyFile, s.keyFile)
}

// createKey makes a new random key file, 0600. It is written to a temporary file
// and linked into place, so the key file appears complete or not at all, and an
// existing key file is never replaced.
func (s *Store) createKey() ([]byte, error) {
	key := make([]byte, keyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("secrets: %v", err)
	}
	dir := filepath.Dir(s.keyFile)
	fail := func(err error) ([]byte, error) {
		wipe(key)
		return nil, fmt.Errorf("%w: creating %s: %v", ErrKeyFile, s.keyFile, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fail(err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(s.keyFile)+".*")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fail(err)
	}
	if _, err := tmp.Write(key); err != nil {
		tmp.Close()
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Link(tmp.Name(), s.keyFile); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Made by someone else meanwhile: use theirs.
			wipe(key)
			return s.readKey()
		}
		return fail(err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return fail(err)
	}
	return key, nil
}

// keyID names a key without revealing it.
func keyID(key []byte) string {
	h := sha256.New()
	h.Write([]byte("iot-hsm secrets key id v1\x00"))
	h.Write(key)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// ad binds an entry to its HSM id.
func ad(hsmID string) []byte { return []byte(format + "\x00pin\x00" + hsmID) }

func aead(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secrets: %v", err)
	}
	return cipher.NewGCM(b)
}

func seal(key []byte, hsmID, pin string) (entry, error) {
	g, err := aead(key)
	if err != nil {
		return entry{}, err
	}
	nonce := make([]byte, g.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return entry{}, fmt.Errorf("secrets: %v", err)
	}
	// uint16 length, the PIN, zeros up to a multiple of padBlock.
	n := 2 + len(pin)
	plain := make([]byte, (n+padBlock-1)/padBlock*padBlock)
	binary.BigEndian.PutUint16(plain, uint16(len(pin)))
	copy(plain[2:], pin)
	defer wipe(plain)
	ct := g.Seal(nil, nonce, plain, ad(hsmID))
	return entry{Nonce: base64.StdEncoding.EncodeToString(nonce), Sealed: base64.StdEncoding.EncodeToString(ct)}, nil
}

func open(key []byte, hsmID string, e entry) (string, error) {
	g, err := aead(key)
	if err != nil {
		return "", err
	}
	nonce, err1 := base64.StdEncoding.DecodeString(e.Nonce)
	ct, err2 := base64.StdEncoding.DecodeString(e.Sealed)
	if err1 != nil || err2 != nil || len(nonce) != g.NonceSize() {
		return "", fmt.Errorf("%w: entry %q does not decode", ErrTampered, hsmID)
	}
	plain, err := g.Open(nil, nonce, ct, ad(hsmID))
	if err != nil {
		return "", fmt.Errorf("%w: entry %q fails authentication", ErrTampered, hsmID)
	}
	defer wipe(plain)
	if len(plain) < 2 || int(binary.BigEndian.Uint16(plain)) > len(plain)-2 {
		return "", fmt.Errorf("%w: entry %q is malformed", ErrTampered, hsmID)
	}
	return string(plain[2 : 2+binary.BigEndian.Uint16(plain)]), nil
}

// wipe overwrites a buffer (best effort: Go may have copied it).
func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}
