package web

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestSessionIdleAndMax(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s := newSessions(10 * time.Minute)
	s.now = func() time.Time { return now }
	cookie, _ := s.create("admin", true)
	req := httptest.NewRequest("GET", "/", nil)
	req.AddCookie(cookie)
	now = now.Add(9 * time.Minute)
	if s.lookup(req) == nil {
		t.Fatal("a session used within its idle time expired")
	}
	// The event stream's check does not keep the session going.
	now = now.Add(9 * time.Minute)
	if !s.alive(req) {
		t.Fatal("alive 9 minutes after a page")
	}
	now = now.Add(2 * time.Minute)
	if s.alive(req) || s.lookup(req) != nil {
		t.Fatal("a session idle past its timeout is still alive")
	}
	cookie, _ = s.create("admin", true)
	req = httptest.NewRequest("GET", "/", nil)
	req.AddCookie(cookie)
	for end := now.Add(sessionMax); now.Before(end); now = now.Add(5 * time.Minute) {
		if s.lookup(req) == nil {
			t.Fatal("an active session expired before sessionMax")
		}
	}
	now = now.Add(time.Minute)
	if s.lookup(req) != nil {
		t.Fatal("a session outlived sessionMax")
	}
	bad := httptest.NewRequest("GET", "/", nil)
	bad.AddCookie(&http.Cookie{Name: sessionCookie, Value: "forged"})
	if s.lookup(bad) != nil {
		t.Fatal("a forged cookie found a session")
	}
}
