package cloudkms

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// ErrIntegrity marks a reply that failed Cloud KMS's integrity checks (a checksum
// that does not match, an unverified digest, another key's name, a signature that
// does not verify) on every attempt. Such a reply is never used.
var ErrIntegrity = errors.New("reply failed the Cloud KMS integrity checks")

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the checksum Cloud KMS uses for its integrity fields.
func crc32c(b []byte) int64 { return int64(crc32.Checksum(b, crcTable)) }

func integrity(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrIntegrity, fmt.Sprintf(format, args...))
}

const maxBackoff = 2 * time.Second

// call runs one API call with a deadline per attempt. Failures in transit and replies
// failing their integrity checks are tried again, a bounded number of times, after
// doubling pauses with jitter; what the API refused is not. The result is mapped to
// the hsm package's errors; running out of attempts in transit marks the key ring
// absent (hsm.ErrOffline).
//
// fn must be safe to repeat: a non-idempotent call makes itself so (see Generate).
func (t *Token) call(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	pause := t.p.opts.Backoff
	var err error
	attempt := 1
	for ; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, t.p.opts.CallTimeout)
		err = fn(actx)
		cancel()
		if err == nil {
			t.answered(true)
			return nil
		}
		if !retryable(err) || attempt >= t.p.opts.Attempts || ctx.Err() != nil {
			break
		}
		logger().Debug("Cloud KMS call failed; trying again", "hsm", t.id, "call", what, "attempt", attempt, "err", err)
		// Full jitter keeps appliances that lost KMS together from retrying together.
		wait := pause/2 + rand.N(pause/2+1)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		pause = min(2*pause, maxBackoff)
		if ctx.Err() != nil {
			break
		}
	}
	return t.mapErr(what, err, attempt, ctx.Err())
}

// retryable tells failures worth another attempt: the call or its reply was lost or
// damaged on the way, not refused.
func retryable(err error) bool {
	if errors.Is(err, ErrIntegrity) {
		return true
	}
	switch codeOf(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// codeOf is the gRPC code of err; context errors that did not come back as a status
// (a deadline that passed before the call left) count as theirs.
func codeOf(err error) codes.Code {
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Unknown
}

// mapErr turns the last failure of a call into the hsm package's errors.
func (t *Token) mapErr(what string, err error, attempts int, ctxErr error) error {
	if errors.Is(err, ErrIntegrity) {
		logger().Error("Cloud KMS reply failed its integrity check", "hsm", t.id, "call", what, "attempts", attempts, "err", err)
		return fmt.Errorf("cloudkms %s: %s: %w (after %d attempts)", t.id, what, err, attempts)
	}
	code, msg := codeOf(err), err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
	}
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		if ctxErr == nil || attempts >= t.p.opts.Attempts {
			t.markAbsent(fmt.Sprintf("%s: %v", what, code))
		}
		return fmt.Errorf("%w: %s: Cloud KMS did not answer %s (%v after %d attempts)", hsm.ErrOffline, t.id, what, code, attempts)
	case codes.Unknown:
		if _, ok := status.FromError(err); !ok {
			return fmt.Errorf("cloudkms %s: %s: %w", t.id, what, err)
		}
	}
	// Everything below is an answer: the API is reachable.
	t.answered(false)
	switch code {
	case codes.Unauthenticated:
		t.setAuthorized(false)
		return fmt.Errorf("%w: %s: Cloud KMS did not accept the credentials for %s: %s", hsm.ErrUnauthorized, t.id, what, msg)
	case codes.PermissionDenied:
		return fmt.Errorf("%w: %s: Cloud KMS denied %s: %s (check the service account's roles on the key ring)", hsm.ErrUnauthorized, t.id, what, msg)
	case codes.ResourceExhausted:
		return fmt.Errorf("%w: %s: Cloud KMS quota exhausted for %s: %s; quotas are counted per minute, retry in a minute or raise the project's quota", hsm.ErrBusy, t.id, what, msg)
	case codes.NotFound:
		return fmt.Errorf("%w: %s: %s: %s", hsm.ErrNotFound, t.id, what, msg)
	case codes.AlreadyExists:
		return fmt.Errorf("%w: %s: %s: %s", hsm.ErrExists, t.id, what, msg)
	case codes.FailedPrecondition:
		// A version that is disabled, destroyed or still being generated.
		return fmt.Errorf("%w: %s: %s: the key version is not usable: %s", hsm.ErrNotFound, t.id, what, msg)
	case codes.InvalidArgument, codes.OutOfRange, codes.Unimplemented:
		return fmt.Errorf("%w: %s: Cloud KMS refused %s: %s", hsm.ErrUnsupported, t.id, what, msg)
	}
	return fmt.Errorf("cloudkms %s: %s: %v: %s", t.id, what, code, msg)
}
