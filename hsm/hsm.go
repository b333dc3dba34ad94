// Package hsm is what every key backend offers the appliance: tokens (a YubiKey, a
// PKCS#11 token, a Cloud KMS key ring), their key slots, a crypto.Signer per slot key,
// and the typed errors callers test with errors.Is. Backends live in sub-packages and
// know nothing of MQTT or of the slot lifecycle.
package hsm

import (
	"context"
	"crypto"
	"crypto/x509"
)

// Kind names a backend, as the protocol spells it.
type Kind string

const (
	KindPKCS11   Kind = "pkcs11"
	KindYubiKey  Kind = "yubikey"
	KindCloudKMS Kind = "cloudkms"
)

// Info describes one token.
type Info struct {
	ID      string // stable across restarts and re-plugs: derived from the serial
	Kind    Kind
	Model   string
	Serial  string
	Present bool
	PIN     PINStatus
}

// PINStatus says whether the appliance holds a PIN that the token accepted, and how
// many tries the token still allows (-1 when it does not say).
type PINStatus struct {
	Set     bool
	Retries int
}

// SlotInfo is one occupied key position on a token.
type SlotInfo struct {
	Slot     string // backend-specific name: CKA_ID hex, PIV slot, KMS key/version
	KeyType  KeyType
	Label    string
	HasCert  bool
	Occupied bool
}

// KeyOptions tunes key creation.
type KeyOptions struct {
	Label string
	// Overwrite replaces a key already in the slot; without it an occupied slot is
	// ErrExists, so a retried request can never silently destroy a CA key.
	Overwrite bool
}

// Token is one HSM: the operations every backend has. What only some backends can do
// is an optional interface (PINLogin, Importer, CertificateStore, KeyDeleter,
// ManagementKeyer, PINCounter, Attester), asked for with a type assertion or through
// this package's Login, Import, StoreCertificate, Certificate and DeleteKey, which
// answer ErrUnsupported for a token without it.
// Implementations serialise their own operations (one session or card handle per
// token) and are safe for concurrent use; a token that disappears answers ErrOffline
// until it comes back.
type Token interface {
	Info() Info
	Slots(ctx context.Context) ([]SlotInfo, error)
	Generate(ctx context.Context, slot string, kt KeyType, opts KeyOptions) (crypto.PublicKey, error)
	PublicKey(ctx context.Context, slot string) (crypto.PublicKey, error)
	// Signer returns a signer for the slot key; its Sign honours crypto.SignerOpts
	// (hash, *rsa.PSSOptions) and fails with ErrOffline when the token is gone.
	Signer(ctx context.Context, slot string) (crypto.Signer, error)
	Close() error
}

// PINLogin is implemented by tokens guarded by a user PIN (PKCS#11, YubiKey). Login
// checks pin against the token and keeps it for later sessions. A rejected PIN is
// returned as *PINError and is never retried.
type PINLogin interface {
	Login(ctx context.Context, pin string) error
}

// Importer is implemented by tokens that take a key made outside them. Import stores
// key on the token as a non-extractable key; the caller wipes its copy.
type Importer interface {
	Import(ctx context.Context, slot string, key crypto.Signer, opts KeyOptions) (crypto.PublicKey, error)
}

// CertificateStore is implemented by tokens that hold certificates next to their keys.
// StoreCertificate replaces any earlier certificate of the slot.
type CertificateStore interface {
	StoreCertificate(ctx context.Context, slot string, cert *x509.Certificate) error
	Certificate(ctx context.Context, slot string) (*x509.Certificate, error)
}

// KeyDeleter is implemented by tokens that can destroy a key. DeleteKey destroys the
// slot key and its certificate.
type KeyDeleter interface {
	DeleteKey(ctx context.Context, slot string) error
}

// Provider finds the tokens of one backend (a PKCS#11 module, pcscd, a KMS project).
type Provider interface {
	// Tokens rescans and returns every token the backend can see now.
	Tokens(ctx context.Context) ([]Token, error)
	Close() error
}

// ManagementKeyer is implemented by tokens that have a management key apart from
// their PIN (a YubiKey's PIV management key). SetManagementKey has the token check
// pin and key, then keeps the key in memory for administrative commands (writing
// keys and certificates). A refused key is ErrManagementKey; a refused PIN is a
// *PINError, as from Login.
type ManagementKeyer interface {
	SetManagementKey(ctx context.Context, pin string, key []byte) error
}

// PINCounter is implemented by tokens that can tell how many PIN tries are left
// without spending one (a YubiKey's empty VERIFY, a PKCS#11 token's flags), so a
// PIN change can be refused before it would block the token. -1 is unknown.
type PINCounter interface {
	PINRetries(ctx context.Context) (int, error)
}

// Attester is implemented by tokens that can prove a key was generated inside them
// (a YubiKey's PIV attestation). The chain starts with the key's attestation
// certificate and has been checked against the backend's attestation roots.
type Attester interface {
	Attest(ctx context.Context, slot string) ([]*x509.Certificate, error)
}
