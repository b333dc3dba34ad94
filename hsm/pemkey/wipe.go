package pemkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"math/big"
)

// Wipe overwrites the private values of a key returned by Parse (RSA D, the
// primes and the CRT values; ECDSA D) so that the Go copy does not outlive the
// import into the token. The key is unusable afterwards. Other key types and
// nil are ignored.
//
// This is best effort and narrows the window rather than closing it: the
// garbage collector may already have moved or copied the words, intermediate
// buffers inside the standard library and the pkcs8 library are out of reach,
// and Go keeps derived copies it does not expose (the precomputed FIPS form of
// an RSA key, which Wipe can only drop, and a cached form of an ECDSA key,
// which lives until the key itself is collected).
func Wipe(key crypto.Signer) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k == nil {
			return
		}
		wipeInt(k.D)
		for _, p := range k.Primes {
			wipeInt(p)
		}
		wipeInt(k.Precomputed.Dp)
		wipeInt(k.Precomputed.Dq)
		wipeInt(k.Precomputed.Qinv)
		//lint:ignore SA1019 CRTValues is deprecated but Precompute still fills it for multi-prime keys, so it holds secrets.
		for _, v := range k.Precomputed.CRTValues { //nolint:staticcheck // see lint:ignore above
			wipeInt(v.Exp)
			wipeInt(v.Coeff)
			wipeInt(v.R)
		}
		// Drops the hidden precomputed form the zeroed fields no longer match;
		// its memory cannot be overwritten from outside crypto/rsa.
		k.Precomputed = rsa.PrecomputedValues{}
	case *ecdsa.PrivateKey:
		if k == nil {
			return
		}
		//lint:ignore SA1019 D is deprecated for computing with, but it is where the parsed scalar lives and the only handle to overwrite it.
		wipeInt(k.D) //nolint:staticcheck // see lint:ignore above
	}
}

// wipeInt zeroes the words, including spare capacity that may hold an earlier
// value, before resetting the length; SetInt64(0) alone only shortens the slice.
func wipeInt(b *big.Int) {
	if b == nil {
		return
	}
	w := b.Bits()
	clear(w[:cap(w)])
	b.SetInt64(0)
}
