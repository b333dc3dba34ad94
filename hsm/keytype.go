package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
)

// KeyType is the protocol's name for a CA key algorithm and size.
type KeyType string

const (
	RSA2048 KeyType = "rsa2048"
	RSA3072 KeyType = "rsa3072"
	RSA4096 KeyType = "rsa4096"
	P256    KeyType = "p256"
	P384    KeyType = "p384"
)

// KeyTypes lists every key type in the order the protocol documents them.
var KeyTypes = []KeyType{RSA2048, RSA3072, RSA4096, P256, P384}

// ParseKeyType accepts exactly the protocol's spellings: an unknown value is an error,
// never a silent default.
func ParseKeyType(s string) (KeyType, error) {
	for _, kt := range KeyTypes {
		if string(kt) == s {
			return kt, nil
		}
	}
	return "", fmt.Errorf("%w: key type %q (want one of rsa2048 rsa3072 rsa4096 p256 p384)", ErrUnsupported, s)
}

// IsRSA reports whether kt is an RSA type.
func (kt KeyType) IsRSA() bool { return kt == RSA2048 || kt == RSA3072 || kt == RSA4096 }

// Bits is the RSA modulus size; 0 for EC types.
func (kt KeyType) Bits() int {
	switch kt {
	case RSA2048:
		return 2048
	case RSA3072:
		return 3072
	case RSA4096:
		return 4096
	}
	return 0
}

// Curve is the EC curve; nil for RSA types.
func (kt KeyType) Curve() elliptic.Curve {
	switch kt {
	case P256:
		return elliptic.P256()
	case P384:
		return elliptic.P384()
	}
	return nil
}

// KeyTypeOf names the type of a public key, or fails for keys the appliance does not take.
func KeyTypeOf(pub crypto.PublicKey) (KeyType, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return RSA2048, nil
		case 3072:
			return RSA3072, nil
		case 4096:
			return RSA4096, nil
		}
		return "", fmt.Errorf("%w: RSA key of %d bits", ErrUnsupported, k.N.BitLen())
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return P256, nil
		case elliptic.P384():
			return P384, nil
		}
		return "", fmt.Errorf("%w: EC curve %s", ErrUnsupported, k.Curve.Params().Name)
	}
	return "", fmt.Errorf("%w: key type %T", ErrUnsupported, pub)
}
