package web

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

const (
	sessionCookie = "iothsm_session"
	// sessionMax bounds a login however active it is.
	sessionMax = 12 * time.Hour
)

// session is one login. The cookie carries a random token; only its hash is kept,
// so a memory dump shows no usable cookie.
type session struct {
	user    string
	csrf    string
	created time.Time
	seen    time.Time
}

type sessions struct {
	mu   sync.Mutex
	byID map[[32]byte]*session
	idle time.Duration
	now  func() time.Time
}

func newSessions(idle time.Duration) *sessions {
	return &sessions{byID: map[[32]byte]*session{}, idle: idle, now: time.Now}
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session for user and returns its cookie.
func (s *sessions) create(user string, secure bool) (*http.Cookie, *session) {
	tok := randomToken()
	now := s.now()
	ses := &session{user: user, csrf: randomToken(), created: now, seen: now}
	s.mu.Lock()
	s.expire(now)
	s.byID[sha256.Sum256([]byte(tok))] = ses
	s.mu.Unlock()
	return &http.Cookie{Name: sessionCookie, Value: tok, Path: "/", HttpOnly: true, Secure: secure,
		SameSite: http.SameSiteStrictMode, MaxAge: int(sessionMax / time.Second)}, ses
}

// lookup returns the live session of r, refreshing its idle time; nil when none.
func (s *sessions) lookup(r *http.Request) *session { return s.find(r, true) }

// alive reports whether r's session is still live without refreshing it: an open
// event stream alone does not keep a login going.
func (s *sessions) alive(r *http.Request) bool { return s.find(r, false) != nil }

func (s *sessions) find(r *http.Request, refresh bool) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	key := sha256.Sum256([]byte(c.Value))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ses := s.byID[key]
	if ses == nil {
		return nil
	}
	if now.Sub(ses.seen) > s.idle || now.Sub(ses.created) > sessionMax {
		delete(s.byID, key)
		return nil
	}
	if refresh {
		ses.seen = now
	}
	return ses
}

// drop ends the session of r (logout).
func (s *sessions) drop(r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		s.mu.Lock()
		delete(s.byID, sha256.Sum256([]byte(c.Value)))
		s.mu.Unlock()
	}
}

func (s *sessions) expire(now time.Time) {
	for k, ses := range s.byID {
		if now.Sub(ses.seen) > s.idle || now.Sub(ses.created) > sessionMax {
			delete(s.byID, k)
		}
	}
}

func clearCookie(secure bool) *http.Cookie {
	return &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true, Secure: secure,
		SameSite: http.SameSiteStrictMode, MaxAge: -1}
}
