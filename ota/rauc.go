package ota

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// RAUC talks to the RAUC service (de.pengutronix.rauc.Installer on the system bus):
// it installs bundles into the other slot, and after the reboot marks the booted slot
// good or bad.
type RAUC struct {
	conn *dbus.Conn
	obj  dbus.BusObject
}

const (
	raucName  = "de.pengutronix.rauc"
	raucPath  = dbus.ObjectPath("/")
	raucIface = "de.pengutronix.rauc.Installer"
)

// DialRAUC connects to RAUC on the bus at address ("" for the system bus).
func DialRAUC(address string) (*RAUC, error) {
	var conn *dbus.Conn
	var err error
	if address == "" {
		conn, err = dbus.ConnectSystemBus()
	} else {
		conn, err = dbus.Connect(address)
	}
	if err != nil {
		return nil, fmt.Errorf("rauc: D-Bus: %w", err)
	}
	return &RAUC{conn: conn, obj: conn.Object(raucName, raucPath)}, nil
}

// Close drops the bus connection.
func (r *RAUC) Close() error { return r.conn.Close() }

// BootSlot is the slot the system booted from (RAUC's BootSlot property).
func (r *RAUC) BootSlot() (string, error) {
	v, err := r.obj.GetProperty(raucIface + ".BootSlot")
	if err != nil {
		return "", fmt.Errorf("rauc: BootSlot: %w", err)
	}
	s, _ := v.Value().(string)
	return s, nil
}

// Mark marks a slot ("booted", "other" or a slot name) good, bad or active.
func (r *RAUC) Mark(state, slot string) error {
	var name, msg string
	if err := r.obj.Call(raucIface+".Mark", 0, state, slot).Store(&name, &msg); err != nil {
		return fmt.Errorf("rauc: mark %s %s: %w", state, slot, err)
	}
	slog.Info("rauc: marked", "state", state, "slot", name, "message", msg)
	return nil
}

// Install installs the bundle at path and waits for RAUC to complete it, relaying its
// progress. RAUC checks the bundle's signature against its keyring and refuses a
// bundle it cannot verify; that error comes back here.
func (r *RAUC) Install(ctx context.Context, path string, progress func(pct int, msg string)) error {
	rule := []dbus.MatchOption{dbus.WithMatchObjectPath(raucPath)}
	if err := r.conn.AddMatchSignal(append(rule, dbus.WithMatchInterface(raucIface), dbus.WithMatchMember("Completed"))...); err != nil {
		return fmt.Errorf("rauc: %w", err)
	}
	defer r.conn.RemoveMatchSignal(append(rule, dbus.WithMatchInterface(raucIface), dbus.WithMatchMember("Completed"))...)
	if err := r.conn.AddMatchSignal(append(rule, dbus.WithMatchInterface("org.freedesktop.DBus.Properties"), dbus.WithMatchMember("PropertiesChanged"))...); err != nil {
		return fmt.Errorf("rauc: %w", err)
	}
	defer r.conn.RemoveMatchSignal(append(rule, dbus.WithMatchInterface("org.freedesktop.DBus.Properties"), dbus.WithMatchMember("PropertiesChanged"))...)
	sigs := make(chan *dbus.Signal, 64)
	r.conn.Signal(sigs)
	defer r.conn.RemoveSignal(sigs)

	call := r.obj.CallWithContext(ctx, raucIface+".InstallBundle", 0, path, map[string]dbus.Variant{})
	if call.Err != nil {
		return fmt.Errorf("rauc: install: %w", call.Err)
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case s := <-sigs:
			switch s.Name {
			case raucIface + ".Completed":
				code, _ := s.Body[0].(int32)
				if code == 0 {
					return nil
				}
				return fmt.Errorf("%w: rauc: install failed (%d): %s", ErrRefused, code, r.lastError())
			case "org.freedesktop.DBus.Properties.PropertiesChanged":
				if len(s.Body) < 2 {
					continue
				}
				changed, _ := s.Body[1].(map[string]dbus.Variant)
				if p, ok := changed["Progress"]; ok && progress != nil {
					var v struct {
						Pct   int32
						Msg   string
						Depth int32
					}
					if dbus.Store([]any{p.Value()}, &v) == nil {
						progress(int(v.Pct), v.Msg)
					}
				}
			}
		case <-time.After(time.Minute):
			// No signal for a minute: ask, in case one was lost.
			if op, err := r.obj.GetProperty(raucIface + ".Operation"); err == nil && op.Value() == "idle" {
				if e := r.lastError(); e != "" {
					return fmt.Errorf("%w: rauc: %s", ErrRefused, e)
				}
				return nil
			}
		}
	}
}

// BundleVersion is the version in the bundle's manifest, read by RAUC's Info, which
// checks the bundle's signature against RAUC's keyring first: the version is signed.
func (r *RAUC) BundleVersion(ctx context.Context, path string) (Version, error) {
	var compatible, version string
	if err := r.obj.CallWithContext(ctx, raucIface+".Info", 0, path).Store(&compatible, &version); err != nil {
		return Version{}, fmt.Errorf("%w: rauc: reading the bundle: %v", ErrRefused, err)
	}
	v, err := ParseVersion(version)
	if err != nil {
		return Version{}, fmt.Errorf("rauc: the bundle's manifest version: %w", err)
	}
	return v, nil
}

func (r *RAUC) lastError() string {
	v, err := r.obj.GetProperty(raucIface + ".LastError")
	if err != nil {
		return err.Error()
	}
	s, _ := v.Value().(string)
	return s
}

// installRAUC hands the verified bundle to RAUC, records the trial and asks for the
// reboot; the daemon reboots once no request is in flight.
func (u *Updater) installRAUC(path string, to Version, baseline Health) error {
	u.progress(protocol.OTAInstall, 0, "installing into the other slot")
	before, err := u.o.RAUC.BootSlot()
	if err != nil {
		return err
	}
	if err := u.o.RAUC.Install(u.ctx, path, func(pct int, msg string) {
		u.progress(protocol.OTAInstall, pct, msg)
	}); err != nil {
		return err
	}
	t := trial{Mode: ModeRAUC, From: u.o.Version, To: to.String(), URL: u.Status().URL, BootSlot: before,
		Baseline: baseline, Started: time.Now().UTC()}
	if err := writeJSON(u.trialPath(), t); err != nil {
		return fmt.Errorf("recording the trial: %w", err)
	}
	u.mu.Lock()
	u.st.BootSlot = before
	u.mu.Unlock()
	u.progress(protocol.OTAReboot, 0, "installed; rebooting into the other slot once no request is in flight")
	if u.o.Reboot != nil {
		u.o.Reboot()
	}
	return nil
}
