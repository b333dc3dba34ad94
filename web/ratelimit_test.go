package web

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestLimiterRefills(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newLimiter()
	l.now = func() time.Time { return now }
	for range loginBurst {
		if err := l.allow("192.0.2.1"); err != nil {
			t.Fatal(err)
		}
		l.failed("192.0.2.1")
	}
	if err := l.allow("192.0.2.1"); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("after %d failures: %v", loginBurst, err)
	}
	if err := l.allow("192.0.2.2"); err != nil {
		t.Fatalf("another address: %v", err)
	}
	now = now.Add(loginRefill)
	if err := l.allow("192.0.2.1"); err != nil {
		t.Fatalf("a minute later: %v", err)
	}
	l.failed("192.0.2.1")
	if err := l.allow("192.0.2.1"); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("one try a minute: %v", err)
	}
	// Many addresses together stop at the shared bucket.
	for i := range loginBurst * allFactor {
		l.failed(fmt.Sprintf("198.51.100.%d", i))
	}
	if err := l.allow("203.0.113.9"); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("a fresh address after a spread-out flood: %v", err)
	}
}
