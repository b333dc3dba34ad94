package web

import (
	"errors"
	"sync"
	"time"
)

// ErrRateLimited: too many failed logins lately, from this address or from all.
var ErrRateLimited = errors.New("too many failed logins; wait a minute and try again")

// limiter counts failed logins in token buckets: one per client address and one for
// all, so that many addresses together cannot guess faster than one may. A bucket
// holds burst tries and gains one every refill.
type limiter struct {
	mu      sync.Mutex
	buckets map[string]*bucket
	all     bucket
	burst   float64
	refill  time.Duration
	now     func() time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

const (
	loginBurst  = 5
	loginRefill = time.Minute
	// The shared bucket holds and gains four addresses' worth.
	allFactor = 4
)

func newLimiter() *limiter {
	return &limiter{buckets: map[string]*bucket{}, burst: loginBurst, refill: loginRefill, now: time.Now}
}

// allow reports whether a login from addr may be checked now.
func (l *limiter) allow(addr string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.bucket(addr, now)
	l.fill(&l.all, now, l.burst*allFactor, allFactor)
	if b.tokens < 1 || l.all.tokens < 1 {
		return ErrRateLimited
	}
	return nil
}

// failed takes a token from addr's bucket and from the shared one.
func (l *limiter) failed(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.bucket(addr, now).tokens--
	l.fill(&l.all, now, l.burst*allFactor, allFactor)
	l.all.tokens--
}

func (l *limiter) bucket(addr string, now time.Time) *bucket {
	b := l.buckets[addr]
	if b == nil {
		if len(l.buckets) > 10000 {
			l.buckets = map[string]*bucket{} // bounded memory; the shared bucket still holds
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[addr] = b
	}
	l.fill(b, now, l.burst, 1)
	return b
}

// fill adds what the bucket gained since it was last looked at, rate tokens per
// refill period.
func (l *limiter) fill(b *bucket, now time.Time, max, rate float64) {
	if b.at.IsZero() {
		b.tokens, b.at = max, now
		return
	}
	b.tokens += rate * float64(now.Sub(b.at)) / float64(l.refill)
	if b.tokens > max {
		b.tokens = max
	}
	b.at = now
}
