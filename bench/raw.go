package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"slices"
	"time"

	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
)

type rawResult struct {
	KeyType hsm.KeyType `json:"key_type"`
	Rate    float64     `json:"per_second"`
	P50     float64     `json:"p50_ms"`
	N       int         `json:"signatures"`
	Others  float64     `json:"cpu_others_cores"`
	// VerifyMs is one verification of such a signature in Go, which the appliance
	// does after every raw-digest signature (ca.SignDigest).
	VerifyMs float64 `json:"verify_in_go_ms"`
}

// hashFor is the digest each key type signs in every row: what its CA certificate
// is signed with (ca.SignatureAlgorithm), so raw and appliance rows sign alike.
func hashFor(kt hsm.KeyType) crypto.Hash {
	if kt == hsm.P384 {
		return crypto.SHA384
	}
	return crypto.SHA256
}

// rawSpeed is the physical limit: one session, one goroutine, C_Sign back to back
// through the same Signer the appliance uses, nothing else.
func rawSpeed(tok *pkcs11.Token, slot string, kt hsm.KeyType, warmup, window time.Duration) (rawResult, error) {
	signer, err := tok.Signer(context.Background(), slot)
	if err != nil {
		return rawResult{}, err
	}
	h := hashFor(kt)
	digest := make([]byte, h.Size())
	_, _ = rand.Read(digest)
	sig, err := signer.Sign(rand.Reader, digest, h)
	if err != nil {
		return rawResult{}, err
	}
	if err := verifyDigest(signer.Public(), h, digest, sig); err != nil {
		return rawResult{}, err
	}
	for end := time.Now().Add(warmup); time.Now().Before(end); {
		if _, err := signer.Sign(rand.Reader, digest, h); err != nil {
			return rawResult{}, err
		}
	}
	var lat []time.Duration
	c0 := takeCPU(0)
	t0 := time.Now()
	end := t0.Add(window)
	for {
		s := time.Now()
		if !s.Before(end) {
			break
		}
		if _, err := signer.Sign(rand.Reader, digest, h); err != nil {
			return rawResult{}, err
		}
		lat = append(lat, time.Since(s))
	}
	elapsed := time.Since(t0)
	_, _, others := takeCPU(0).since(c0, elapsed.Seconds())
	nv := 0
	v0 := time.Now()
	for time.Since(v0) < 300*time.Millisecond {
		if err := verifyDigest(signer.Public(), h, digest, sig); err != nil {
			return rawResult{}, err
		}
		nv++
	}
	slices.Sort(lat)
	return rawResult{KeyType: kt, Rate: float64(len(lat)) / elapsed.Seconds(), P50: ms(percentile(lat, 0.5)), N: len(lat), Others: others,
		VerifyMs: ms(time.Since(v0)) / float64(nv)}, nil
}

func verifyDigest(pub crypto.PublicKey, h crypto.Hash, digest, sig []byte) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, h, digest, sig)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return fmt.Errorf("ECDSA signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("unexpected key %T", pub)
}
