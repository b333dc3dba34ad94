package web

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticRoot embed.FS

var staticFS = func() fs.FS { return staticRoot }()

var funcs = template.FuncMap{
	"when": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"retries": func(n *int) string {
		if n == nil {
			return "?"
		}
		return fmt.Sprint(*n)
	},
	"count": countText,
}

// pages are parsed once, each with the layout and the live fragment.
var pages = func() map[string]*template.Template {
	out := map[string]*template.Template{}
	names, _ := fs.Glob(templateFS, "templates/*.html")
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" || base == "live" {
			continue
		}
		out[base] = template.Must(template.New(base).Funcs(funcs).ParseFS(templateFS,
			"templates/layout.html", "templates/live.html", n))
	}
	return out
}()

// fragment is the live part of the home page, rendered alone for the event stream.
var fragment = template.Must(template.New("live").Funcs(funcs).ParseFS(templateFS, "templates/live.html"))

// render writes a page. data may carry Error (shown above the content); the
// session's CSRF token and the status for the header are added here.
func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, name string, ses *session, data map[string]any) {
	if data == nil {
		data = map[string]any{}
	}
	data["Page"] = name
	if ses != nil {
		data["CSRF"] = ses.csrf
		data["User"] = ses.user
		if d := s.device(); d != nil {
			if _, ok := data["Status"]; !ok {
				data["Status"] = d.Status()
			}
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := pages[name].ExecuteTemplate(w, "layout", data); err != nil {
		slog.Error("rendering a page", "page", name, "err", err)
	}
}

// fail renders the error page.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, ses *session, status int, err error) {
	data := map[string]any{"Error": err.Error()}
	var pe *protocol.Error
	if errors.As(err, &pe) {
		data["Code"] = pe.Code
	}
	s.render(w, r, status, "error", ses, data)
}

// httpStatus maps a device error code to the page's status.
func httpStatus(code string) int {
	switch code {
	case protocol.CodeBadRequest, protocol.CodeUnknownCommand:
		return http.StatusBadRequest
	case protocol.CodeNotFound:
		return http.StatusNotFound
	case protocol.CodeConflict:
		return http.StatusConflict
	case protocol.CodePINIncorrect, protocol.CodePINBlocked, protocol.CodePolicyDenied, protocol.CodeUnauthorized:
		return http.StatusForbidden
	case protocol.CodeBusy, protocol.CodeHSMOffline, protocol.CodePINRequired:
		return http.StatusServiceUnavailable
	case protocol.CodeUnsupported:
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}
