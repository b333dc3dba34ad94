package web

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/iot-hsm/iot-hsm/config"
)

// Errors of the login pages.
var (
	// ErrNotLoggedIn: a page or action asked for without a live session.
	ErrNotLoggedIn = errors.New("not logged in")
	// ErrNotLoopback: the first password may be set from this machine only (or with
	// iot-hsm web passwd on its console).
	ErrNotLoopback = errors.New("the first password is set from the appliance itself: run `iot-hsm web passwd` on its console, or open the dashboard on the appliance")
	// ErrPasswordSet: the setup page after a password exists.
	ErrPasswordSet = errors.New("a password is already set")
	// ErrMismatch: the two passwords of the setup form differ.
	ErrMismatch = errors.New("the two passwords differ")
)

// maxForm bounds a posted form: the largest is a certificate with its chain.
const maxForm = 1 << 20

var setupMu sync.Mutex

// page wraps a page that needs a login: without one the browser goes to the login
// page (or the setup page, before any password exists).
func (s *Server) page(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ses := s.sessions.lookup(r)
		if ses == nil {
			if r.URL.Path == "/events" {
				http.Error(w, ErrNotLoggedIn.Error(), http.StatusUnauthorized)
				return
			}
			to := "/login"
			if !HasPassword(s.opts.Dir) {
				to = "/setup"
			}
			http.Redirect(w, r, to, http.StatusSeeOther)
			return
		}
		h(w, r, ses)
	}
}

// form wraps an action: a login and the session's CSRF token are required.
func (s *Server) form(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ses := s.sessions.lookup(r)
		if ses == nil {
			s.fail(w, r, nil, http.StatusUnauthorized, ErrNotLoggedIn)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if err := r.ParseForm(); err != nil {
			s.fail(w, r, ses, http.StatusBadRequest, err)
			return
		}
		if err := checkCSRF(r, ses); err != nil {
			s.fail(w, r, ses, http.StatusForbidden, err)
			return
		}
		h(w, r, ses)
	}
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	if !HasPassword(s.opts.Dir) {
		http.Redirect(w, r, "/setup", http.StatusSeeOther)
		return
	}
	s.render(w, r, http.StatusOK, "login", nil, nil)
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil || checkCSRF(r, nil) != nil {
		s.render(w, r, http.StatusForbidden, "login", nil, map[string]any{"Error": ErrCSRF.Error()})
		return
	}
	addr := clientAddr(r)
	if err := s.limiter.allow(addr); err != nil {
		slog.Warn("dashboard login refused: rate limit", "remote", addr)
		s.render(w, r, http.StatusTooManyRequests, "login", nil, map[string]any{"Error": err.Error()})
		return
	}
	s.checking <- struct{}{}
	err := CheckPassword(s.opts.Dir, r.PostFormValue("password"))
	<-s.checking
	if err != nil {
		status := http.StatusUnauthorized
		if errors.Is(err, ErrBadPassword) {
			s.limiter.failed(addr)
			slog.Warn("dashboard login failed", "remote", addr)
		} else if !errors.Is(err, ErrNoPassword) {
			slog.Error("dashboard login", "err", err)
			status, err = http.StatusInternalServerError, errors.New("the password file cannot be read; see the log")
		}
		s.render(w, r, status, "login", nil, map[string]any{"Error": err.Error()})
		return
	}
	s.startSession(w, r, addr)
}

func (s *Server) startSession(w http.ResponseWriter, r *http.Request, addr string) {
	c, _ := s.sessions.create(user, true)
	http.SetCookie(w, c)
	slog.Info("dashboard login", "user", user, "remote", addr)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, _ *session) {
	s.sessions.drop(r)
	http.SetCookie(w, clearCookie(true))
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func (s *Server) setupPage(w http.ResponseWriter, r *http.Request) {
	if err := s.canSetup(r); err != nil {
		s.render(w, r, http.StatusForbidden, "setup", nil, map[string]any{"Error": err.Error(), "Closed": true})
		return
	}
	s.render(w, r, http.StatusOK, "setup", nil, nil)
}

func (s *Server) setup(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil || checkCSRF(r, nil) != nil {
		s.render(w, r, http.StatusForbidden, "setup", nil, map[string]any{"Error": ErrCSRF.Error()})
		return
	}
	setupMu.Lock()
	defer setupMu.Unlock()
	if err := s.canSetup(r); err != nil {
		s.render(w, r, http.StatusForbidden, "setup", nil, map[string]any{"Error": err.Error(), "Closed": true})
		return
	}
	pw := r.PostFormValue("password")
	if pw != r.PostFormValue("confirm") {
		s.render(w, r, http.StatusBadRequest, "setup", nil, map[string]any{"Error": ErrMismatch.Error()})
		return
	}
	if err := SetPassword(s.opts.Dir, pw); err != nil {
		s.render(w, r, http.StatusBadRequest, "setup", nil, map[string]any{"Error": err.Error()})
		return
	}
	slog.Info("dashboard password set from this machine", "remote", clientAddr(r))
	s.startSession(w, r, clientAddr(r))
}

// canSetup: the first password, from this machine only. Anyone on the network
// could otherwise claim a fresh appliance before its operator does.
func (s *Server) canSetup(r *http.Request) error {
	if HasPassword(s.opts.Dir) {
		return ErrPasswordSet
	}
	if !config.IsLoopbackHost(clientAddr(r)) {
		return ErrNotLoopback
	}
	return nil
}

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
