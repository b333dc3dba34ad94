// Package ota updates the appliance over the air: signed binary updates with a trial
// run and rollback on a host without RAUC, and RAUC-driven A/B image updates on the
// Buildroot appliance. Whatever the path, the state (slots, reply cache, audit trail)
// stays on the data partition and is not touched.
package ota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/atomicfile"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// Modes.
const (
	ModeOff    = "off"
	ModeBinary = "binary"
	ModeRAUC   = "rauc"
)

// ErrBusy is an update asked for while another one runs.
var ErrBusy = errors.New("an update is already in progress")

// ErrInterrupted is the outcome of an update the appliance stopped in the middle of.
var ErrInterrupted = errors.New("interrupted: the appliance stopped before the update was installed; the running system was not replaced")

// Options configure the updater and hook it into the daemon.
type Options struct {
	Mode        string
	Keys        Keys
	Window      time.Duration // how long a trial has to become healthy
	MaxSize     int64
	DownloadDir string
	StateDir    string // the data partition: the trial record lives in <StateDir>/ota
	Binary      string // binary mode: path of the running binary, replaced by an update
	Version     string
	RAUC        *RAUC // rauc mode
	HTTP        *http.Client

	Event   func(protocol.OTAEvent) // progress, for the events topic
	Busy    func(updating bool)     // the status LED's "updating" phase
	Health  func() Health           // the daemon's health now
	Restart func()                  // binary mode: restart so that the new binary runs
	Reboot  func()                  // rauc mode: stop cleanly, then reboot
}

// Updater runs one update at a time and the trial that follows it.
type Updater struct {
	o      Options
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	st      protocol.OTAStatus
	running bool
}

// New makes an updater; the last outcome recorded on the data partition is its first
// status.
func New(o Options) (*Updater, error) {
	switch o.Mode {
	case ModeOff, ModeBinary, ModeRAUC:
	default:
		return nil, fmt.Errorf("ota: unknown mode %q", o.Mode)
	}
	if o.Mode == ModeBinary && o.Binary == "" {
		return nil, errors.New("ota: binary mode needs the binary's path")
	}
	if o.Mode == ModeRAUC && o.RAUC == nil {
		return nil, errors.New("ota: rauc mode needs a RAUC client")
	}
	if o.Window <= 0 {
		o.Window = 2 * time.Minute
	}
	u := &Updater{o: o, st: protocol.OTAStatus{Mode: o.Mode, Version: o.Version, Phase: protocol.OTAIdle}}
	u.ctx, u.cancel = context.WithCancel(context.Background())
	if last, err := readJSON[protocol.OTAStatus](u.lastPath()); err == nil {
		u.st = last
		u.st.Mode, u.st.Version = o.Mode, o.Version
		u.interrupted()
	}
	return u, nil
}

// interrupted turns an update that was still downloading, verifying or installing
// when the appliance stopped (a crash, a power cut) into a failure: nothing
// replaced the running system, and ota.status says so instead of showing an
// update that no one is running. An install that finished has a trial record.
func (u *Updater) interrupted() {
	switch u.st.Phase {
	case protocol.OTADownload, protocol.OTAVerify, protocol.OTAInstall:
	default:
		return
	}
	if _, err := os.Stat(u.trialPath()); err == nil {
		return
	}
	u.st.Phase, u.st.Percent = protocol.OTAFailed, 100
	u.st.Error = ErrInterrupted.Error()
	u.st.Message, u.st.ErrorCode = u.st.Error, ""
	if err := writeJSON(u.lastPath(), u.st); err != nil {
		slog.Warn("ota: outcome not recorded", "err", err)
	}
}

// Close stops what runs (a download, a trial watch).
func (u *Updater) Close() {
	u.cancel()
	if u.o.RAUC != nil {
		u.o.RAUC.Close()
	}
}

// Status is the update's state now.
func (u *Updater) Status() protocol.OTAStatus {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.st
}

func (u *Updater) dir() string       { return filepath.Join(u.o.StateDir, "ota") }
func (u *Updater) trialPath() string { return filepath.Join(u.dir(), "trial.json") }
func (u *Updater) lastPath() string  { return filepath.Join(u.dir(), "last.json") }

// progress sets the phase and publishes it.
func (u *Updater) progress(phase string, pct int, msg string) {
	u.mu.Lock()
	changed := u.st.Phase != phase || u.st.Percent/5 != pct/5 || u.st.Message != msg
	u.st.Phase, u.st.Percent, u.st.Message = phase, pct, msg
	if phase != protocol.OTAFailed {
		u.st.Error, u.st.ErrorCode = "", ""
	}
	now := time.Now().UTC()
	u.st.Updated = &now
	u.mu.Unlock()
	if changed && u.o.Event != nil {
		u.o.Event(protocol.OTAEvent{Time: now, Type: "ota", Phase: phase, Percent: pct, Message: msg})
	}
}

// finish ends an update or a trial: the outcome is kept on the data partition, so
// ota.status still tells it after the restart.
func (u *Updater) finish(phase string, err error, msg string) {
	if err != nil {
		msg = err.Error()
	}
	u.progress(phase, 100, msg)
	u.mu.Lock()
	u.st.ErrorCode = ""
	if err != nil {
		u.st.Error, u.st.ErrorCode = err.Error(), errorCode(err)
	}
	u.running = false
	st := u.st
	u.mu.Unlock()
	if err := writeJSON(u.lastPath(), st); err != nil {
		slog.Warn("ota: outcome not recorded", "err", err)
	}
	if u.o.Busy != nil {
		u.o.Busy(false)
	}
}

// errorCode is the protocol code of an update refused before anything was replaced.
func errorCode(err error) string {
	switch {
	case errors.Is(err, ErrDowngrade):
		return protocol.CodePolicyDenied
	case errors.Is(err, ErrRefused):
		return protocol.CodeBadRequest
	}
	return ""
}

// Start begins an update and returns at once; progress goes to the events topic and
// to Status. a.AllowDowngrade is taken as given: the device lets only requests
// signed by a trusted controller carry it.
func (u *Updater) Start(a protocol.OTAUpdateArgs) (protocol.OTAStatus, error) {
	if u.o.Mode == ModeOff {
		return protocol.OTAStatus{}, fmt.Errorf("%w: updates are off (ota.mode)", ErrRefused)
	}
	if a.URL == "" || a.SHA256 == "" || a.Size <= 0 {
		return protocol.OTAStatus{}, fmt.Errorf("%w: url, sha256 and size are required", ErrRefused)
	}
	if u.o.Mode == ModeBinary && a.Signature == "" {
		return protocol.OTAStatus{}, fmt.Errorf("%w: binary updates must carry a minisign signature", ErrRefused)
	}
	u.mu.Lock()
	if u.running {
		u.mu.Unlock()
		return protocol.OTAStatus{}, ErrBusy
	}
	if _, err := os.Stat(u.trialPath()); err == nil {
		u.mu.Unlock()
		return protocol.OTAStatus{}, fmt.Errorf("%w: the previous update is still on trial", ErrBusy)
	}
	u.running = true
	u.st.URL, u.st.Error, u.st.Previous = a.URL, "", ""
	u.mu.Unlock()
	if u.o.Busy != nil {
		u.o.Busy(true)
	}
	u.progress(protocol.OTADownload, 0, "")
	// Recorded before anything is written: an update cut short by a power cut is
	// then reported as interrupted after the restart.
	if err := writeJSON(u.lastPath(), u.Status()); err != nil {
		slog.Warn("ota: start not recorded", "err", err)
	}
	go u.run(a)
	return u.Status(), nil
}

func (u *Updater) run(a protocol.OTAUpdateArgs) {
	path, err := Fetch(u.ctx, Download{URL: a.URL, SHA256: a.SHA256, Size: a.Size, Dir: u.o.DownloadDir,
		MaxSize: u.o.MaxSize, Client: u.o.HTTP, Progress: func(done, total int64) {
			u.progress(protocol.OTADownload, int(done*100/total), "")
		}})
	if err != nil {
		slog.Error("ota: download failed", "url", a.URL, "err", err)
		u.finish(protocol.OTAFailed, err, "")
		return
	}
	u.progress(protocol.OTAVerify, 0, "")
	to, err := u.verify(path, a)
	if err != nil {
		slog.Error("ota: update refused", "err", err)
		os.Remove(path)
		u.finish(protocol.OTAFailed, err, "")
		return
	}
	u.progress(protocol.OTAVerify, 100, "SHA-256, signature and version "+to.String()+" verified")
	baseline := u.o.Health()
	switch u.o.Mode {
	case ModeBinary:
		err = u.installBinary(path, to, baseline)
	case ModeRAUC:
		err = u.installRAUC(path, to, baseline)
	}
	os.Remove(path)
	if err != nil {
		slog.Error("ota: install failed; nothing replaced", "err", err)
		u.finish(protocol.OTAFailed, err, "")
	}
}

// verify checks the signature, then the signed version (the minisign trusted
// comment's in binary mode, the bundle manifest's in rauc mode) against the running
// version and the minimum version.
func (u *Updater) verify(path string, a protocol.OTAUpdateArgs) (Version, error) {
	var comment string
	if a.Signature != "" || u.o.Mode == ModeBinary {
		c, err := u.o.Keys.VerifyFile(path, []byte(a.Signature))
		if err != nil {
			return Version{}, err
		}
		comment = c
	}
	var to Version
	var err error
	if u.o.Mode == ModeRAUC {
		to, err = u.o.RAUC.BundleVersion(u.ctx, path)
	} else {
		to, err = versionOfComment(comment)
	}
	if err != nil {
		return Version{}, err
	}
	floor, err := u.floor()
	if err != nil {
		return Version{}, err
	}
	if err := admit(u.o.Version, to, floor, a.AllowDowngrade); err != nil {
		return Version{}, err
	}
	if a.AllowDowngrade {
		slog.Warn("ota: update admitted with allow_downgrade", "running", u.o.Version, "to", to)
	}
	return to, nil
}

// trial is the record of an update on trial, on the data partition: the new binary
// (or the new system after the reboot) reads it and proves itself against Baseline.
type trial struct {
	Mode     string    `json:"mode"`
	From     string    `json:"from_version"`
	To       string    `json:"to_version,omitempty"` // the signed version
	URL      string    `json:"url,omitempty"`
	Binary   string    `json:"binary,omitempty"`
	Prev     string    `json:"prev,omitempty"`
	BootSlot string    `json:"boot_slot,omitempty"` // rauc: the slot booted before
	Baseline Health    `json:"baseline"`
	Started  time.Time `json:"started"`
	Starts   int       `json:"starts"`
}

// Trial, after start-up, watches an update on trial (if one is): committed once the
// daemon is healthy as it was before, rolled back when the window passes. It
// returns at once.
func (u *Updater) Trial() {
	t, err := readJSON[trial](u.trialPath())
	if err != nil {
		return
	}
	u.mu.Lock()
	u.running = true
	u.st.Previous, u.st.URL = t.From, t.URL
	u.mu.Unlock()
	if u.o.Busy != nil {
		u.o.Busy(true)
	}
	if t.Mode == ModeRAUC && u.o.RAUC != nil {
		if slot, err := u.o.RAUC.BootSlot(); err == nil {
			u.mu.Lock()
			u.st.BootSlot = slot
			u.mu.Unlock()
			if slot == t.BootSlot {
				// The bootloader fell back: the new slot did not boot.
				os.Remove(u.trialPath())
				u.finish(protocol.OTARolledBack, nil, "the bootloader came back to slot "+slot)
				return
			}
		}
	}
	u.progress(protocol.OTATrial, 0, fmt.Sprintf("on trial: %s -> %s, %s to become healthy", t.From, u.o.Version, u.o.Window))
	go u.watch(t)
}

func (u *Updater) watch(t trial) {
	deadline := time.Now().Add(u.o.Window)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = u.o.Health().Meets(t.Baseline); last == nil {
			u.commit(t)
			return
		}
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		pct := int(100 - left*100/u.o.Window)
		u.progress(protocol.OTATrial, pct, last.Error())
		select {
		case <-u.ctx.Done():
			return
		case <-tick.C:
		}
	}
	slog.Error("ota: the update did not become healthy within the window; rolling back", "window", u.o.Window, "err", last)
	u.rollback(t, fmt.Errorf("not healthy within %s: %v", u.o.Window, last))
}

func (u *Updater) commit(t trial) {
	if t.Mode == ModeRAUC {
		if err := u.o.RAUC.Mark("good", "booted"); err != nil {
			slog.Error("ota: RAUC mark good failed", "err", err)
			u.rollback(t, fmt.Errorf("mark good: %w", err))
			return
		}
	}
	to := t.To
	if to == "" {
		to = u.o.Version
	}
	u.raiseFloor(t.From, to)
	os.Remove(u.trialPath())
	slog.Info("ota: update committed", "from", t.From, "to", u.o.Version)
	u.finish(protocol.OTACommitted, nil, fmt.Sprintf("%s -> %s committed", t.From, u.o.Version))
}

func (u *Updater) rollback(t trial, why error) {
	switch t.Mode {
	case ModeBinary:
		if err := restoreBinary(t.Binary, t.Prev); err != nil {
			slog.Error("ota: restoring the previous binary failed", "err", err)
			u.finish(protocol.OTAFailed, fmt.Errorf("rollback failed: %v (after: %v)", err, why), "")
			return
		}
		os.Remove(u.trialPath())
		u.finish(protocol.OTARolledBack, why, "")
		if u.o.Restart != nil {
			u.o.Restart()
		}
	case ModeRAUC:
		if err := u.o.RAUC.Mark("bad", "booted"); err != nil {
			slog.Error("ota: RAUC mark bad failed", "err", err)
		}
		os.Remove(u.trialPath())
		u.finish(protocol.OTARolledBack, why, "")
		u.progress(protocol.OTAReboot, 0, "rebooting into the previous slot")
		if u.o.Reboot != nil {
			u.o.Reboot()
		}
	}
}

func readJSON[T any](path string) (T, error) {
	var v T
	b, err := os.ReadFile(path)
	if err != nil {
		return v, err
	}
	return v, json.Unmarshal(b, &v)
}

// writeJSON writes atomically and durably: the record must survive a power cut.
func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}
