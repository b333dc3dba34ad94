package appliance

import (
	"path/filepath"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/web"
)

// WebDir is where the dashboard keeps its TLS key and certificate and the hash of
// its password: the state directory, on the data partition.
func WebDir(stateDir string) string { return filepath.Join(stateDir, "web") }

// newWeb prepares the dashboard when [web] turns it on: its certificate exists
// before the device does, so that the first status already shows its fingerprint.
func (a *Appliance) newWeb(h Hooks) (*web.Server, error) {
	if !a.cfg.Web.Enabled {
		return nil, nil
	}
	w, err := a.cfg.Web.Effective()
	if err != nil {
		return nil, err
	}
	return web.New(web.Options{
		Dir: WebDir(a.cfg.StateDir), Listen: w.Listen, TLS: w.UseTLS(), SessionTimeout: w.SessionTimeout,
		AuditPath: filepath.Join(a.cfg.StateDir, "audit.log"), LEDs: h.LEDs,
	})
}

// webOptions hands the device's status changes and events to the dashboard too.
func webOptions(o *device.Options, srv *web.Server) {
	if srv == nil {
		return
	}
	o.Web = srv.StatusWeb()
	next := o.OnChange
	o.OnChange = func(st protocol.Status) {
		if next != nil {
			next(st)
		}
		srv.StatusChanged(st)
	}
	o.OnEvent = srv.Event
}

// WebAddr is the address the dashboard listens on; "" when it is off.
func (a *Appliance) WebAddr() string {
	if a.web == nil {
		return ""
	}
	return a.web.Addr()
}

// webConfigChanged is for Reload: the dashboard keeps its listener until a restart.
func webConfigChanged(old, cfg *config.Config) bool {
	return old.Web.Enabled != cfg.Web.Enabled || old.Web.Listen != cfg.Web.Listen ||
		old.Web.UseTLS() != cfg.Web.UseTLS() || old.Web.SessionTimeout != cfg.Web.SessionTimeout
}
