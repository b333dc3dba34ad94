package web

import (
	"net/http"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// liveView is what the live part of the home page shows.
type liveView struct {
	protocol.Status
	LEDs []string
}

func (s *Server) live(st protocol.Status) liveView {
	v := liveView{Status: st}
	if s.opts.LEDs != nil {
		v.LEDs = s.opts.LEDs()
	}
	return v
}

func (s *Server) home(w http.ResponseWriter, r *http.Request, ses *session) {
	d := s.device()
	if d == nil {
		s.fail(w, r, ses, http.StatusServiceUnavailable, errNoDevice)
		return
	}
	st := d.Status()
	s.render(w, r, http.StatusOK, "home", ses, map[string]any{"Status": st, "Live": s.live(st)})
}
