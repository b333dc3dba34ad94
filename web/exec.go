package web

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// errNoDevice: a page asked for before the device core runs.
var errNoDevice = errors.New("the appliance is starting; retry in a moment")

// exec runs one device command for the session's user and decodes its result into
// out. The error is the device's typed error (a *protocol.Error) as MQTT would
// carry it.
func (s *Server) exec(r *http.Request, ses *session, cmd string, args, out any) error {
	d := s.device()
	if d == nil {
		return protocol.Errorf(protocol.CodeBusy, "%v", errNoDevice)
	}
	ctx, cancel := context.WithTimeout(r.Context(), execTimeout)
	defer cancel()
	rep, err := d.Exec(ctx, cmd, ses.user, args)
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			return pe
		}
		return protocol.Errorf(protocol.CodeBusy, "%v", err)
	}
	if rep.Error != nil {
		return rep.Error
	}
	if out != nil && len(rep.Result) > 0 {
		if err := json.Unmarshal(rep.Result, out); err != nil {
			slog.Error("dashboard: reading a result", "cmd", cmd, "err", err)
			return protocol.Errorf(protocol.CodeInternal, "the result could not be read")
		}
	}
	return nil
}

// failExec renders a device error on the error page.
func (s *Server) failExec(w http.ResponseWriter, r *http.Request, ses *session, err error) {
	status := http.StatusInternalServerError
	var pe *protocol.Error
	if errors.As(err, &pe) {
		status = httpStatus(pe.Code)
	}
	s.fail(w, r, ses, status, err)
}

// errStatus is the page status for a device error shown on a form.
func errStatus(err error) int {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return httpStatus(pe.Code)
	}
	return http.StatusInternalServerError
}
