package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"io"
	"testing"
	"time"
)

func TestSignDigest(t *testing.T) {
	now := time.Now()
	msg := []byte("an artefact hashed by the PKI")
	s256 := sha256.Sum256(msg)
	s384 := sha512.Sum384(msg)
	s512 := sha512.Sum512(msg)
	digests := map[crypto.Hash][]byte{crypto.SHA256: s256[:], crypto.SHA384: s384[:], crypto.SHA512: s512[:]}

	for _, kind := range []string{"rsa2048", "p256", "p384"} {
		t.Run(kind, func(t *testing.T) {
			root, key := labRoot(t, kind, 80, now)
			is := &Issuer{Cert: root, Signer: key}
			for hash, digest := range digests {
				sig, err := is.SignDigest(digest, hash, false, now)
				if err != nil {
					t.Fatalf("SignDigest %v: %v", hash, err)
				}
				switch pub := root.PublicKey.(type) {
				case *rsa.PublicKey:
					if err := rsa.VerifyPKCS1v15(pub, hash, digest, sig); err != nil {
						t.Errorf("PKCS#1 v1.5 %v: %v", hash, err)
					}
					pss, err := is.SignDigest(digest, hash, true, now)
					if err != nil {
						t.Fatalf("SignDigest PSS %v: %v", hash, err)
					}
					// The salt length is part of the contract: verify with
					// exactly the hash length, not "auto".
					if err := rsa.VerifyPSS(pub, hash, digest, pss, &rsa.PSSOptions{SaltLength: hash.Size(), Hash: hash}); err != nil {
						t.Errorf("PSS %v: %v", hash, err)
					}
					if err := rsa.VerifyPKCS1v15(pub, hash, digest, pss); err == nil {
						t.Errorf("the PSS signature also verifies as PKCS#1 v1.5")
					}
				case *ecdsa.PublicKey:
					if !ecdsa.VerifyASN1(pub, digest, sig) {
						t.Errorf("ECDSA %v does not verify", hash)
					}
					other := append([]byte(nil), digest...)
					other[0] ^= 1
					if ecdsa.VerifyASN1(pub, other, sig) {
						t.Error("ECDSA signature verifies for another digest")
					}
					sig, err := is.SignDigest(digest, hash, true, now)
					wantProfile(t, sig, err)
				}
			}

			t.Run("refused", func(t *testing.T) {
				sig, err := is.SignDigest(s256[:20], crypto.SHA256, false, now)
				wantProfile(t, sig, err)
				sig, err = is.SignDigest(s384[:], crypto.SHA256, false, now)
				wantProfile(t, sig, err)
				sha1 := make([]byte, 20)
				sig, err = is.SignDigest(sha1, crypto.SHA1, false, now)
				wantProfile(t, sig, err)
				sig, err = is.SignDigest(s256[:], crypto.Hash(0), false, now)
				wantProfile(t, sig, err)
				sig, err = is.SignDigest(s256[:], crypto.SHA256, false, root.NotAfter.Add(time.Second))
				wantPolicy(t, sig, err)
			})
		})
	}
}

// flipSigner is a token that returns a damaged signature.
type flipSigner struct{ crypto.Signer }

func (f flipSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := f.Signer.Sign(r, digest, opts)
	if err == nil {
		sig[len(sig)-1] ^= 1
	}
	return sig, err
}

// A signature that does not verify is never given out: SignDigest fails, and
// SignDigestThenCheck's check does.
func TestSignDigestCatchesAFaultySigner(t *testing.T) {
	now := time.Now()
	d := sha256.Sum256([]byte("x"))
	for _, kind := range []string{"rsa2048", "p256"} {
		root, key := labRoot(t, kind, 80, now)
		is := &Issuer{Cert: root, Signer: flipSigner{key}}
		if sig, err := is.SignDigest(d[:], crypto.SHA256, false, now); err == nil {
			t.Errorf("%s: a damaged signature was returned: %x", kind, sig)
		}
		_, check, err := is.SignDigestThenCheck(d[:], crypto.SHA256, false, now)
		if err != nil || check() == nil {
			t.Errorf("%s: err %v, and the check of a damaged signature passed", kind, err)
		}
		good := &Issuer{Cert: root, Signer: key}
		if _, check, err := good.SignDigestThenCheck(d[:], crypto.SHA256, false, now); err != nil || check() != nil {
			t.Errorf("%s: a good signature: %v", kind, err)
		}
	}
}
