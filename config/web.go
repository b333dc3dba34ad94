package config

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Web configures the dashboard (docs/web.md).
//
//	[web]
//	enabled = true
//	listen = ":8443"          # HTTPS; plain HTTP only on a loopback address with tls = false
//	tls = true
//	session_timeout = "30m"   # idle time after which a login expires
type Web struct {
	Enabled        bool          `toml:"enabled"`
	Listen         string        `toml:"listen"`
	TLS            *bool         `toml:"tls"`
	SessionTimeout time.Duration `toml:"session_timeout"`
}

// Web defaults.
const (
	DefaultWebListen         = ":8443"
	DefaultWebSessionTimeout = 30 * time.Minute
)

// ErrPlainWeb (with ErrInvalid): the dashboard asked to serve plain HTTP beyond
// loopback, where its password and session cookie would cross the network readable.
var ErrPlainWeb = errors.New("the dashboard serves plain HTTP on loopback only")

// UseTLS reports whether the dashboard serves HTTPS (the default).
func (w Web) UseTLS() bool { return w.TLS == nil || *w.TLS }

// Effective returns the settings with their defaults applied, and checks them.
func (w Web) Effective() (Web, error) {
	if w.Listen == "" {
		w.Listen = DefaultWebListen
	}
	if w.SessionTimeout == 0 {
		w.SessionTimeout = DefaultWebSessionTimeout
	}
	if w.SessionTimeout < time.Minute || w.SessionTimeout > 24*time.Hour {
		return w, fmt.Errorf("%w: web.session_timeout %s (want 1m..24h)", ErrInvalid, w.SessionTimeout)
	}
	host, _, err := net.SplitHostPort(w.Listen)
	if err != nil {
		return w, fmt.Errorf("%w: web.listen %q: %v", ErrInvalid, w.Listen, err)
	}
	if !w.UseTLS() && !IsLoopbackHost(host) {
		return w, fmt.Errorf("%w: %w: web.listen %q with tls = false (use 127.0.0.1:PORT, or keep tls)",
			ErrInvalid, ErrPlainWeb, w.Listen)
	}
	return w, nil
}

// IsLoopbackHost reports whether host names this machine only.
func IsLoopbackHost(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}
