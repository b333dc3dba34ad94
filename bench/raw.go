package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"slices"
	"time"

	"github.com/iot-hsm/iot-hsm/hsm"
)

type rawResult struct {
	KeyType hsm.KeyType `json:"key_type"`
	Rate    float64     `json:"per_second"`
	P50     float64     `json:"p50_ms"`
	N       int         `json:"signatures"`
	Others  float64     `json:"cpu_others_cores"`
}

// hashFor is the digest each key type signs in every row: what its CA certificate
// is signed with (ca.SignatureAlgorithm), so raw and appliance rows sign alike.
func hashFor(kt hsm.KeyType) crypto.Hash {
	if kt == hsm.P384 {
		return crypto.SHA384
	}
	return crypto.SHA256
}

// rawSpeed is the physical limit: one goroutine, signatures back to back through the
// Signer the appliance's registry hands out for the slot, nothing else.
func rawSpeed(tok hsm.Token, slot string, kt hsm.KeyType, warmup, window time.Duration) (rawResult, error) {
	signer, err := tok.Signer(context.Background(), slot)
	if err != nil {
		return rawResult{}, err
	}
	h := hashFor(kt)
	digest := make([]byte, h.Size())
	_, _ = rand.Read(digest)
	for end := time.Now().Add(warmup); time.Now().Before(end); {
		if _, err := signer.Sign(rand.Reader, digest, h); err != nil {
			return rawResult{}, err
		}
	}
	var lat []time.Duration
	c0 := takeCPU(0)
	t0 := time.Now()
	for end := t0.Add(window); time.Now().Before(end); {
		s := time.Now()
		if _, err := signer.Sign(rand.Reader, digest, h); err != nil {
			return rawResult{}, err
		}
		lat = append(lat, time.Since(s))
	}
	elapsed := time.Since(t0)
	_, _, others := takeCPU(0).since(c0, elapsed.Seconds())
	slices.Sort(lat)
	return rawResult{KeyType: kt, Rate: float64(len(lat)) / elapsed.Seconds(), P50: ms(percentile(lat, 0.5)), N: len(lat), Others: others}, nil
}
