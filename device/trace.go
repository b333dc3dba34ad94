package device

import (
	"crypto"
	"io"
	"runtime/pprof"
	"time"
)

// The steps a request takes through the device core, as Options.Trace names them
// and as the pprof label StepLabel marks their CPU samples.
const (
	// StepRun is the command on its token's worker. For a sign it holds StepSign
	// and, for a certificate, building and checking it in Go.
	StepRun = "run"
	// StepSign is one signature by the token, inside StepRun.
	StepSign = "sign"
	// StepVerify is checking a batch's raw-digest signatures again, on the finisher.
	StepVerify = "verify"
	// StepRecord is writing a batch to the audit trail and the reply cache, synced.
	StepRecord = "record"
	// StepPublish is publishing a batch's replies until the broker acknowledged them.
	StepPublish = "publish"
)

// StepLabel is the pprof label key set to the step while it runs, with Trace set.
const StepLabel = "step"

// begin starts a step on the calling goroutine and returns what ends it. Without a
// Trace it costs a nil check. With one, the step's CPU samples carry StepLabel (on
// top of the labels of the context given to Start) and its wall time is reported.
func (d *Device) begin(step string) (end func()) {
	if d.opts.Trace == nil {
		return func() {}
	}
	pprof.SetGoroutineLabels(pprof.WithLabels(d.ctx, pprof.Labels(StepLabel, step)))
	t0 := time.Now()
	return func() {
		d.opts.Trace(step, time.Since(t0))
		pprof.SetGoroutineLabels(d.ctx)
	}
}

// traced times each signature of s as StepSign when a Trace is set.
func (d *Device) traced(s crypto.Signer) crypto.Signer {
	if d.opts.Trace == nil {
		return s
	}
	return tracedSigner{s, d.opts.Trace}
}

type tracedSigner struct {
	crypto.Signer
	trace func(string, time.Duration)
}

func (s tracedSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	t0 := time.Now()
	sig, err := s.Signer.Sign(r, digest, opts)
	s.trace(StepSign, time.Since(t0))
	return sig, err
}
