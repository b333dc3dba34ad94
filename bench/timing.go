package main

import (
	"context"
	"crypto"
	"io"
	"sync/atomic"
	"time"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// Timing shims at two interfaces the product already has (hsm.Provider and the
// device's Transport): they measure, in wall time and without sampling, how long each
// signature and each publish takes where the device core calls them. A stack sampler
// alone misjudges this on a busy machine: it gets the CPU mostly while the worker
// waits, so CPU-bound C_Sign looks shorter than it is. The shims add two clock reads
// per call and change nothing else.

type timer struct{ ns, calls atomic.Int64 }

func (t *timer) add(d time.Duration) {
	t.ns.Add(int64(d))
	t.calls.Add(1)
}

type timerSnap struct{ ns, calls int64 }

func (t *timer) snap() timerSnap { return timerSnap{t.ns.Load(), t.calls.Load()} }

// since is the time spent and the calls made since s0.
func (t *timer) since(s0 timerSnap) (time.Duration, int64) {
	s := t.snap()
	return time.Duration(s.ns - s0.ns), s.calls - s0.calls
}

type timers struct{ sign, publish timer }

var shims timers

type timedProvider struct {
	hsm.Provider
}

func (p timedProvider) Tokens(ctx context.Context) ([]hsm.Token, error) {
	toks, err := p.Provider.Tokens(ctx)
	for i, t := range toks {
		if pt, ok := t.(pkcs11Token); ok {
			toks[i] = timedToken{pt}
		}
	}
	return toks, err
}

// pkcs11Token is what a PKCS#11 token offers; the shim passes the optional methods
// the device core uses for provisioning through, so login, import, certificates and
// key deletion work through it as on the bare token.
type pkcs11Token interface {
	hsm.Token
	hsm.PINLogin
	hsm.Importer
	hsm.CertificateStore
	hsm.KeyDeleter
}

type timedToken struct {
	pkcs11Token
}

func (t timedToken) Signer(ctx context.Context, slot string) (crypto.Signer, error) {
	s, err := t.pkcs11Token.Signer(ctx, slot)
	if err != nil {
		return nil, err
	}
	return timedSigner{s}, nil
}

type timedSigner struct {
	crypto.Signer
}

func (s timedSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	t0 := time.Now()
	sig, err := s.Signer.Sign(r, digest, opts)
	shims.sign.add(time.Since(t0))
	return sig, err
}
