package web

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// Device is what the dashboard needs of the device core (device.Device).
type Device interface {
	// Exec runs a command as the dashboard user named, through the MQTT intake.
	Exec(ctx context.Context, cmd, user string, args any) (protocol.Reply, error)
	Status() protocol.Status
}

// Options configure the dashboard.
type Options struct {
	// Dir keeps the TLS key and certificate and the password hash.
	Dir            string
	Listen         string
	TLS            bool
	SessionTimeout time.Duration
	// AuditPath is the audit trail's file, verified on the audit page.
	AuditPath string
	// LEDs names what each LED shows now ("status: blink"); nil when there are none.
	LEDs func() []string
}

// user is the dashboard's one account; the audit trail names it "web:admin".
const user = "admin"

// execTimeout bounds a command run from a page: a token that hangs must not hold a
// browser's request forever.
const execTimeout = 2 * time.Minute

// Server is the dashboard.
type Server struct {
	opts     Options
	dev      atomic.Value // Device, set by Attach
	sessions *sessions
	limiter  *limiter
	hub      *hub
	cert     tls.Certificate
	fp       string
	srv      *http.Server
	ln       net.Listener
	// checking bounds the concurrent password checks: each holds 19 MiB.
	checking chan struct{}
}

// New prepares the dashboard: with TLS, its certificate is loaded or made.
func New(opts Options) (*Server, error) {
	s := &Server{opts: opts, sessions: newSessions(opts.SessionTimeout), limiter: newLimiter(),
		hub: newHub(), checking: make(chan struct{}, 2)}
	if opts.TLS {
		c, err := LoadOrCreateTLS(opts.Dir)
		if err != nil {
			return nil, err
		}
		s.cert, s.fp = c, Fingerprint(c.Certificate[0])
	}
	return s, nil
}

// StatusWeb is the dashboard as the status document shows it.
func (s *Server) StatusWeb() *protocol.StatusWeb {
	return &protocol.StatusWeb{Listen: s.opts.Listen, TLS: s.opts.TLS, Fingerprint: s.fp}
}

// Attach gives the dashboard the device it drives.
func (s *Server) Attach(d Device) { s.dev.Store(d) }

func (s *Server) device() Device {
	d, _ := s.dev.Load().(Device)
	return d
}

// Start listens and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("web: %w", err)
	}
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug)}
	if s.opts.TLS {
		s.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{s.cert}, MinVersion: tls.VersionTLS12}
		ln = tls.NewListener(ln, s.srv.TLSConfig)
	}
	s.ln = ln
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("web dashboard stopped", "err", err)
		}
	}()
	scheme := "http"
	if s.opts.TLS {
		scheme = "https"
	}
	slog.Info("web dashboard", "url", scheme+"://"+ln.Addr().String()+"/", "tls_sha256", s.fp,
		"password_set", HasPassword(s.opts.Dir))
	return nil
}

// Addr is the address the dashboard listens on, once started.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Close stops the dashboard: live streams end, requests in progress get a second.
func (s *Server) Close() {
	s.hub.close()
	if s.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
}

// Handler is the dashboard's routes with its security headers.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.FileServerFS(staticFS))
	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("GET /setup", s.setupPage)
	mux.HandleFunc("POST /setup", s.setup)
	mux.HandleFunc("POST /logout", s.form(s.logout))
	mux.HandleFunc("GET /{$}", s.page(s.home))
	mux.HandleFunc("GET /events", s.page(s.events))
	s.wizardRoutes(mux)
	s.actionRoutes(mux)
	return s.headers(mux)
}

// headers sets what keeps the pages from being framed, sniffed or mixed with
// anything from elsewhere: the pages load nothing but their own files.
func (s *Server) headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
			"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		// same-origin, not no-referrer: with no-referrer browsers send "Origin: null"
		// on form posts, and the origin check would learn nothing.
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		if s.opts.TLS {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	})
}
