package pemkey

import (
	"crypto"
	"crypto/x509/pkix"
	"encoding/asn1"

	"github.com/youmark/pkcs8"
)

// The github.com/youmark/pkcs8 library does the PBES2 decryption, but it
// trusts its input: a wrong-length IV or a ciphertext that is not a whole
// number of blocks makes crypto/cipher panic, its "GCM" ciphers actually run
// CBC, an unknown PRF or a PBKDF2 keyLength field silently changes the derived
// key, and KDF costs are unbounded. So the envelope is checked here first;
// once it passes, any failure from the library can only mean the password (or
// the ciphertext) is wrong.

var (
	oidPBES2      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidScrypt     = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11591, 4, 11}
	oidHMACSHA1   = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 7}
	oidHMACSHA256 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 9}
	oidPKCS5      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5}
	oidPKCS12PBE  = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 1}
	oidAES128CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES192CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 22}
	oidAES256CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	oidDESEDE3CBC = asn1.ObjectIdentifier{1, 2, 840, 113549, 3, 7}
	aesOIDPrefix  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1}

	prfNames = map[string]string{
		"1.2.840.113549.2.8":  "hmacWithSHA224",
		"1.2.840.113549.2.10": "hmacWithSHA384",
		"1.2.840.113549.2.11": "hmacWithSHA512",
	}
	// The CBC ciphers the library implements correctly, with their block (=IV) length.
	cipherBlockLen = map[string]int{
		oidAES128CBC.String():  16,
		oidAES192CBC.String():  16,
		oidAES256CBC.String():  16,
		oidDESEDE3CBC.String(): 8,
	}
)

// Cost ceilings keep a hostile or careless file from tying up the appliance.
// They sit well above what openssl writes by default (PBKDF2 2048 iterations,
// scrypt N=16384 r=8 p=1, i.e. 16 MiB) and above openssl's own 32 MiB scrypt
// limit, so every key openssl produces with default settings is accepted.
const (
	maxPBKDF2Iterations = 10_000_000
	maxScryptMemory     = 64 << 20 // bytes, 128*r*N
	maxScryptP          = 16
)

type encryptedPrivateKeyInfo struct {
	Algo          pkix.AlgorithmIdentifier
	EncryptedData []byte
}

type pbes2Params struct {
	KDF    pkix.AlgorithmIdentifier
	Scheme pkix.AlgorithmIdentifier
}

type pbkdf2Params struct {
	Salt      []byte
	Iter      int
	KeyLength int                      `asn1:"optional"`
	PRF       pkix.AlgorithmIdentifier `asn1:"optional"`
}

type scryptParams struct {
	Salt      []byte
	N         int
	R         int
	P         int
	KeyLength int `asn1:"optional"`
}

func parseEncryptedPKCS8(der, password []byte) (crypto.Signer, error) {
	if err := checkEncryptedPKCS8(der); err != nil {
		return nil, err
	}
	key, err := decryptPKCS8(der, password)
	if err != nil {
		return nil, ErrBadPassword
	}
	return checkKey(key)
}

// decryptPKCS8 still recovers because the envelope checks mirror what the
// library does today, not a promise it makes; a panic on operator input must
// not take the appliance down.
func decryptPKCS8(der, password []byte) (key any, err error) {
	defer func() {
		if recover() != nil {
			key, err = nil, ErrBadPassword
		}
	}()
	// The library returns the key already parsed by x509.ParsePKCS8PrivateKey
	// and reports any parse failure as a wrong password. A correctly decrypted
	// key the stdlib cannot parse (say, on secp256k1) therefore also ends up
	// as ErrBadPassword; the library gives no way to tell the two apart.
	key, _, err = pkcs8.ParsePrivateKey(der, password)
	return key, err
}

// unsupportedEnc is for refusals of the encryption, where the list of
// accepted key types would only confuse.
func unsupportedEnc(format string, args ...any) error {
	return fail(ErrUnsupported, format, args...)
}

func malformedEnc() error {
	return fail(ErrNoKey, "the ENCRYPTED PRIVATE KEY block is malformed")
}

func checkEncryptedPKCS8(der []byte) error {
	var info encryptedPrivateKeyInfo
	if rest, err := asn1.Unmarshal(der, &info); err != nil || len(rest) > 0 {
		return malformedEnc()
	}
	if !info.Algo.Algorithm.Equal(oidPBES2) {
		if hasPrefix(info.Algo.Algorithm, oidPKCS5) || hasPrefix(info.Algo.Algorithm, oidPKCS12PBE) {
			return unsupportedEnc("legacy PBES1/PKCS#12 key encryption (%s) is not supported (re-encrypt with openssl pkcs8 -topk8 -v2 aes-256-cbc)", info.Algo.Algorithm)
		}
		return unsupportedEnc("key encryption %s is not supported", info.Algo.Algorithm)
	}
	var params pbes2Params
	if rest, err := asn1.Unmarshal(info.Algo.Parameters.FullBytes, &params); err != nil || len(rest) > 0 {
		return malformedEnc()
	}

	blockLen, ok := cipherBlockLen[params.Scheme.Algorithm.String()]
	if !ok {
		if hasPrefix(params.Scheme.Algorithm, aesOIDPrefix) {
			return unsupportedEnc("key encryption %s is not supported (only AES-CBC and 3DES-CBC)", aesModeName(params.Scheme.Algorithm))
		}
		return unsupportedEnc("key encryption cipher %s is not supported (only AES-CBC and 3DES-CBC)", params.Scheme.Algorithm)
	}
	var iv []byte
	if rest, err := asn1.Unmarshal(params.Scheme.Parameters.FullBytes, &iv); err != nil || len(rest) > 0 || len(iv) != blockLen {
		return malformedEnc()
	}
	if n := len(info.EncryptedData); n == 0 || n%blockLen != 0 {
		return malformedEnc()
	}

	switch {
	case params.KDF.Algorithm.Equal(oidPBKDF2):
		return checkPBKDF2(params.KDF.Parameters.FullBytes)
	case params.KDF.Algorithm.Equal(oidScrypt):
		return checkScrypt(params.KDF.Parameters.FullBytes)
	default:
		return unsupportedEnc("key derivation %s is not supported (only PBKDF2 and scrypt)", params.KDF.Algorithm)
	}
}

func checkPBKDF2(der []byte) error {
	var p pbkdf2Params
	if rest, err := asn1.Unmarshal(der, &p); err != nil || len(rest) > 0 || p.Iter < 1 || p.KeyLength < 0 {
		return malformedEnc()
	}
	if p.Iter > maxPBKDF2Iterations {
		return unsupportedEnc("PBKDF2 with %d iterations is beyond the appliance's limit of %d", p.Iter, maxPBKDF2Iterations)
	}
	prf := p.PRF.Algorithm
	switch {
	case len(prf) == 0, prf.Equal(oidHMACSHA1):
	case prf.Equal(oidHMACSHA256):
		// The library's parameter struct has no keyLength field, so when one
		// is present it loses the PRF and derives with SHA-1 instead.
		if p.KeyLength != 0 {
			return unsupportedEnc("PBKDF2 parameters with both keyLength and hmacWithSHA256 are not supported")
		}
	default:
		name, ok := prfNames[prf.String()]
		if !ok {
			name = prf.String()
		}
		return unsupportedEnc("PBKDF2 with %s is not supported (only hmacWithSHA1 and hmacWithSHA256)", name)
	}
	return nil
}

func checkScrypt(der []byte) error {
	var p scryptParams
	if rest, err := asn1.Unmarshal(der, &p); err != nil || len(rest) > 0 {
		return malformedEnc()
	}
	if p.N < 2 || p.N&(p.N-1) != 0 || p.R < 1 || p.P < 1 {
		return malformedEnc()
	}
	if p.P > maxScryptP || p.N > maxScryptMemory/128/p.R {
		return unsupportedEnc("scrypt parameters N=%d r=%d p=%d are beyond the appliance's limits", p.N, p.R, p.P)
	}
	return nil
}

// aesModeName names the GCM modes because the library claims to support
// them; an operator should see that they are refused, not an OID.
func aesModeName(oid asn1.ObjectIdentifier) string {
	if len(oid) == len(aesOIDPrefix)+1 {
		switch oid[len(oid)-1] {
		case 6:
			return "AES-128-GCM"
		case 26:
			return "AES-192-GCM"
		case 46:
			return "AES-256-GCM"
		}
	}
	return oid.String()
}

func hasPrefix(oid, prefix asn1.ObjectIdentifier) bool {
	return len(oid) > len(prefix) && oid[:len(prefix)].Equal(prefix)
}
