// Package pemkey turns an operator-supplied PEM private key into a Go key
// that the token backends (PKCS#11, YubiKey) can import.
//
// Only what the appliance can put on a token is accepted: RSA 2048/3072/4096
// (two primes) and ECDSA on P-256 or P-384. Everything else is refused with
// ErrUnsupported before or right after parsing, so a backend never sees a key
// it would have to reject half-way through an import.
//
// Error messages are written for the operator and are built only from fixed
// text, sizes, PEM types and algorithm OIDs: never from the password, the key
// bytes or the text of an underlying parser error, so nothing secret can reach
// a log through them.
package pemkey

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
)

// The sentinels are what callers branch on; the errors Parse returns usually
// carry a more specific message and unwrap to one of these.
var (
	// ErrNoKey: no usable private key in the input (empty, not PEM, only
	// non-key blocks such as a CERTIFICATE, a damaged key, or more than one key).
	ErrNoKey = errors.New("pemkey: no PEM private key found")
	// ErrPasswordNeeded: the key is encrypted and the password was empty.
	ErrPasswordNeeded = errors.New("pemkey: the private key is encrypted and no password was given")
	// ErrBadPassword: decryption did not yield a key. A wrong password and a
	// corrupted ciphertext cannot be told apart, so this covers both.
	ErrBadPassword = errors.New("pemkey: wrong password for the encrypted private key")
	// ErrUnsupported: a key or encryption the appliance does not take.
	ErrUnsupported = errors.New("pemkey: key type or size not supported; the appliance takes " + supportedKeys)
)

const supportedKeys = "RSA 2048, 3072 or 4096 bits and ECDSA P-256 or P-384"

// keyError gives the operator a precise message while callers still match
// the sentinel with errors.Is.
type keyError struct {
	kind error
	msg  string
}

func (e *keyError) Error() string { return "pemkey: " + e.msg }
func (e *keyError) Unwrap() error { return e.kind }

// fail must only be given non-secret arguments: sizes, OIDs, PEM types.
func fail(kind error, format string, args ...any) error {
	return &keyError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

func unsupported(format string, args ...any) error {
	return fail(ErrUnsupported, format+"; the appliance takes "+supportedKeys, args...)
}

// PEM types this package decodes. Other "... PRIVATE KEY" types (OPENSSH,
// DSA, ...) are recognised as keys so that they are reported as unsupported
// rather than as "no key found".
const (
	typePKCS1     = "RSA PRIVATE KEY"
	typeSEC1      = "EC PRIVATE KEY"
	typePKCS8     = "PRIVATE KEY"
	typeEncPKCS8  = "ENCRYPTED PRIVATE KEY"
	privateSuffix = "PRIVATE KEY"
)

var (
	oidRSA       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidECDSA     = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidCurveP256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidCurveP384 = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
)

// Names for OIDs an operator is likely to bring, so the refusal names the
// algorithm instead of a bare OID.
var oidNames = map[string]string{
	"1.3.132.0.35":          "EC curve P-521",
	"1.3.132.0.33":          "EC curve P-224",
	"1.2.840.10045.3.1.1":   "EC curve P-192",
	"1.3.132.0.10":          "EC curve secp256k1",
	"1.3.36.3.3.2.8.1.1.7":  "EC curve brainpoolP256r1",
	"1.3.36.3.3.2.8.1.1.11": "EC curve brainpoolP384r1",
	"1.3.36.3.3.2.8.1.1.13": "EC curve brainpoolP512r1",
	"1.3.101.112":           "Ed25519",
	"1.3.101.113":           "Ed448",
	"1.3.101.110":           "X25519",
	"1.3.101.111":           "X448",
	"1.2.840.10040.4.1":     "DSA",
	"1.2.840.113549.1.1.10": "RSA-PSS (restricted RSA key)",
	"1.2.840.10046.2.1":     "Diffie-Hellman",
	"1.2.156.10197.1.301":   "SM2",
}

func oidName(oid asn1.ObjectIdentifier) string {
	if n, ok := oidNames[oid.String()]; ok {
		return n
	}
	return "algorithm OID " + oid.String()
}

// Parse reads exactly one private key from PEM data and returns it as an
// *rsa.PrivateKey or *ecdsa.PrivateKey.
//
// Accepted blocks: "RSA PRIVATE KEY" (PKCS#1), "EC PRIVATE KEY" (SEC1),
// "PRIVATE KEY" (PKCS#8), "ENCRYPTED PRIVATE KEY" (PKCS#8 PBES2 with PBKDF2 or
// scrypt and AES-CBC or 3DES-CBC) and legacy OpenSSL "Proc-Type: 4,ENCRYPTED"
// blocks. Non-key blocks (the "EC PARAMETERS" that openssl ecparam writes, a
// certificate bundled with the key) are skipped. A password given for an
// unencrypted key is ignored.
//
// The caller owns the returned key and should Wipe it once it is on the token.
// Parse clears its own copies of the decoded key bytes; it cannot clear the
// caller's data or password.
func Parse(data, password []byte) (crypto.Signer, error) {
	block, err := findKeyBlock(data)
	if err != nil {
		return nil, err
	}
	// block.Bytes is our own base64-decoded copy: for an unencrypted key it is
	// the key itself, so do not leave it for the GC.
	defer clear(block.Bytes)

	//lint:ignore SA1019 legacy OpenSSL "Proc-Type: 4,ENCRYPTED" keys still exist in the field and the stdlib has no replacement.
	legacy := x509.IsEncryptedPEMBlock(block) //nolint:staticcheck // see lint:ignore above
	switch {
	case block.Type == typeEncPKCS8:
		if len(password) == 0 {
			return nil, ErrPasswordNeeded
		}
		return parseEncryptedPKCS8(block.Bytes, password)
	case legacy:
		if len(password) == 0 {
			return nil, ErrPasswordNeeded
		}
		return parseLegacyEncrypted(block, password)
	default:
		return parseDER(block.Type, block.Bytes)
	}
}

// findKeyBlock insists on exactly one key so that a bundle holding two keys
// cannot silently import the wrong one.
func findKeyBlock(data []byte) (*pem.Block, error) {
	var (
		keys  []*pem.Block
		other []string
	)
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if strings.HasSuffix(b.Type, privateSuffix) {
			keys = append(keys, b)
		} else {
			clear(b.Bytes)
			// A long certificate chain should not make a long message.
			if t := shortType(b.Type); !slices.Contains(other, t) {
				other = append(other, t)
			}
		}
	}
	switch {
	case len(keys) == 1:
	case len(keys) > 1:
		for _, b := range keys {
			clear(b.Bytes)
		}
		return nil, fail(ErrNoKey, "the PEM data holds %d private keys; give exactly one", len(keys))
	case len(other) > 0:
		return nil, fail(ErrNoKey, "no private key in the PEM data (found only %s)", strings.Join(other, ", "))
	default:
		return nil, ErrNoKey
	}
	b := keys[0]
	switch b.Type {
	case typePKCS1, typeSEC1, typePKCS8, typeEncPKCS8:
		return b, nil
	}
	clear(b.Bytes)
	return nil, unsupported("PEM block %s is not a supported private key format", shortType(b.Type))
}

// shortType keeps attacker-chosen PEM types from bloating the message.
func shortType(t string) string {
	const limit = 40
	if len(t) > limit {
		t = t[:limit] + "..."
	}
	return fmt.Sprintf("%q", t)
}

func parseDER(pemType string, der []byte) (crypto.Signer, error) {
	switch pemType {
	case typePKCS1:
		return parsePKCS1(der)
	case typeSEC1:
		return parseSEC1(der)
	case typePKCS8:
		return parsePKCS8(der)
	}
	// A legacy-encrypted ENCRYPTED PRIVATE KEY would be doubly encrypted.
	return nil, unsupported("PEM block %s cannot carry legacy encryption", shortType(pemType))
}

// legacyCiphers are the DEK-Info modes x509.DecryptPEMBlock implements;
// checking first lets an unknown mode be reported as unsupported instead of
// as a wrong password.
var legacyCiphers = map[string]bool{
	"DES-CBC":      true,
	"DES-EDE3-CBC": true,
	"AES-128-CBC":  true,
	"AES-192-CBC":  true,
	"AES-256-CBC":  true,
}

func parseLegacyEncrypted(block *pem.Block, password []byte) (crypto.Signer, error) {
	mode, _, ok := strings.Cut(block.Headers["DEK-Info"], ",")
	if !ok {
		return nil, fail(ErrNoKey, "the encrypted %s block has a malformed DEK-Info header", shortType(block.Type))
	}
	if !legacyCiphers[mode] {
		return nil, fail(ErrUnsupported, "legacy PEM encryption %s is not supported (re-encrypt with openssl pkcs8 -topk8 -v2 aes-256-cbc)", shortType(mode))
	}
	//lint:ignore SA1019 legacy OpenSSL "Proc-Type: 4,ENCRYPTED" keys still exist in the field and the stdlib has no replacement; its padding-oracle weakness does not matter for a one-off local import.
	der, err := x509.DecryptPEMBlock(block, password) //nolint:staticcheck // see lint:ignore above
	if err != nil {
		return nil, ErrBadPassword
	}
	defer clear(der)
	key, err := parseDER(block.Type, der)
	// The legacy format has no integrity check beyond the CBC padding, which a
	// wrong password passes about once in 256 tries; the garbage then fails to
	// parse, and that is still a wrong password to the operator.
	if errors.Is(err, ErrNoKey) {
		return nil, ErrBadPassword
	}
	return key, err
}

// pkcs1Header reads only the public head of a PKCS#1 key so the size can be
// refused as unsupported even when the stdlib would refuse to parse it at all
// (Go rejects RSA keys under 1024 bits), and without copying private values.
type pkcs1Header struct {
	Version int
	N       *big.Int
}

func checkPKCS1(der []byte) error {
	var h pkcs1Header
	if _, err := asn1.Unmarshal(der, &h); err != nil || h.N == nil {
		return fail(ErrNoKey, "the RSA private key is malformed")
	}
	switch h.Version {
	case 0:
	case 1:
		return unsupported("multi-prime RSA keys are not supported")
	default:
		return fail(ErrNoKey, "the RSA private key is malformed")
	}
	return checkRSABits(h.N.BitLen())
}

func checkRSABits(bits int) error {
	switch bits {
	case 2048, 3072, 4096:
		return nil
	}
	return unsupported("RSA key of %d bits is not supported", bits)
}

func parsePKCS1(der []byte) (crypto.Signer, error) {
	if err := checkPKCS1(der); err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS1PrivateKey(der)
	if err != nil {
		return nil, fail(ErrNoKey, "the RSA private key is damaged or malformed")
	}
	return checkKey(key)
}

// sec1Header uses RawValue for the private scalar because asn1 copies into a
// []byte field, and that copy would be one more secret left behind.
type sec1Header struct {
	Version    int
	PrivateKey asn1.RawValue
	Curve      asn1.RawValue `asn1:"optional,explicit,tag:0"`
}

func checkSEC1(der []byte) error {
	var h sec1Header
	if _, err := asn1.Unmarshal(der, &h); err != nil || h.Version != 1 {
		return fail(ErrNoKey, "the EC private key is malformed")
	}
	if len(h.Curve.Bytes) == 0 {
		return fail(ErrNoKey, "the EC private key does not name its curve")
	}
	// For an explicit [0] tag a RawValue holds the outer element; the curve
	// parameters are its contents.
	return checkCurve(h.Curve.Bytes)
}

// checkCurve refuses a curve by its OID before parsing, because the stdlib
// cannot parse most curves we would refuse anyway (secp256k1, brainpool) and
// would otherwise make them look like damaged keys.
func checkCurve(params []byte) error {
	var oid asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(params, &oid); err != nil || len(rest) > 0 {
		var raw asn1.RawValue
		if _, err := asn1.Unmarshal(params, &raw); err == nil && raw.Class == asn1.ClassUniversal && raw.Tag == asn1.TagSequence {
			return unsupported("EC keys with explicit curve parameters are not supported (re-export with openssl ec -param_enc named_curve)")
		}
		return fail(ErrNoKey, "the EC private key has malformed curve parameters")
	}
	if oid.Equal(oidCurveP256) || oid.Equal(oidCurveP384) {
		return nil
	}
	return unsupported("%s is not supported", oidName(oid))
}

func parseSEC1(der []byte) (crypto.Signer, error) {
	if err := checkSEC1(der); err != nil {
		return nil, err
	}
	key, err := x509.ParseECPrivateKey(der)
	if err != nil {
		return nil, fail(ErrNoKey, "the EC private key is damaged or malformed")
	}
	return checkKey(key)
}

type pkcs8Header struct {
	Version    int
	Algo       pkix.AlgorithmIdentifier
	PrivateKey asn1.RawValue // RawValue: see sec1Header
}

func parsePKCS8(der []byte) (crypto.Signer, error) {
	var h pkcs8Header
	if _, err := asn1.Unmarshal(der, &h); err != nil || h.PrivateKey.Tag != asn1.TagOctetString {
		return nil, fail(ErrNoKey, "the PKCS#8 private key is malformed")
	}
	switch {
	case h.Algo.Algorithm.Equal(oidRSA):
		if err := checkPKCS1(h.PrivateKey.Bytes); err != nil {
			return nil, err
		}
	case h.Algo.Algorithm.Equal(oidECDSA):
		// The curve normally sits in the algorithm parameters; the inner SEC1
		// key carries it only when those are absent.
		var err error
		if len(h.Algo.Parameters.FullBytes) > 0 {
			err = checkCurve(h.Algo.Parameters.FullBytes)
		} else {
			err = checkSEC1(h.PrivateKey.Bytes)
		}
		if err != nil {
			return nil, err
		}
	default:
		return nil, unsupported("%s keys are not supported", oidName(h.Algo.Algorithm))
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fail(ErrNoKey, "the PKCS#8 private key is damaged or malformed")
	}
	return checkKey(key)
}

// checkKey is the last gate for every path, including the encrypted PKCS#8
// one where the stdlib parsed the key inside the pkcs8 library. Refused keys
// are wiped since the caller never gets them to wipe.
func checkKey(key any) (crypto.Signer, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if err := checkRSABits(k.N.BitLen()); err != nil {
			Wipe(k)
			return nil, err
		}
		// Tokens import RSA as p, q and the CRT values; a third prime has
		// nowhere to go.
		if len(k.Primes) != 2 {
			Wipe(k)
			return nil, unsupported("multi-prime RSA keys are not supported")
		}
		return k, nil
	case *ecdsa.PrivateKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return k, nil
		}
		name := "unknown"
		if p := k.Curve.Params(); p != nil {
			name = p.Name
		}
		Wipe(k)
		return nil, unsupported("EC curve %s is not supported", name)
	case ed25519.PrivateKey:
		clear(k)
		return nil, unsupported("Ed25519 keys are not supported")
	case *ecdh.PrivateKey:
		return nil, unsupported("X25519/ECDH keys cannot sign and are not supported")
	default:
		return nil, unsupported("%T keys are not supported", key)
	}
}
