package web

import (
	"crypto/subtle"
	"errors"
	"net/http"
	"net/url"
)

// ErrCSRF: a form came without the session's CSRF token, with a wrong one, or from
// another origin. SameSite=Strict cookies already keep most cross-site posts out;
// the token also covers browsers and proxies that do not honour it.
var ErrCSRF = errors.New("the form's CSRF token is missing or wrong; reload the page and try again")

// checkCSRF checks the token of a form posted in session ses (the login form, which
// has no session yet, has only the origin check).
func checkCSRF(r *http.Request, ses *session) error {
	if !sameOrigin(r) {
		return ErrCSRF
	}
	if ses == nil {
		return nil
	}
	tok := r.PostFormValue("csrf")
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(ses.csrf)) != 1 {
		return ErrCSRF
	}
	return nil
}

// sameOrigin refuses a request whose Origin header names another host. Requests
// without one (old browsers, curl) or with an opaque one ("null") fall to the token.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" || o == "null" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}
