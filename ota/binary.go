package ota

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/atomicfile"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// maxStarts is how many times an updated binary may start on trial: one start that
// neither committed nor rolled back (a crash, a kill) is forgiven, the next is not.
const maxStarts = 2

// installBinary tries the new binary, swaps it in (keeping the running one as
// <binary>.prev), records the trial and asks for the restart.
func (u *Updater) installBinary(path string, to Version, baseline Health) error {
	u.progress(protocol.OTAInstall, 0, "trying the new binary")
	if err := os.Chmod(path, 0o755); err != nil {
		return err
	}
	ver, err := tryBinary(u.ctx, path)
	if err != nil {
		return fmt.Errorf("%w: the new binary does not run here: %v", ErrRefused, err)
	}
	if f := strings.Fields(ver); len(f) == 0 || f[len(f)-1] != to.String() {
		return fmt.Errorf("%w: the new binary reports %q, its signature says version %s", ErrVersionMismatch, ver, to)
	}
	u.progress(protocol.OTAInstall, 30, "new binary reports version "+ver)
	prev, err := swapBinary(u.o.Binary, path)
	if err != nil {
		return err
	}
	t := trial{Mode: ModeBinary, From: u.o.Version, To: to.String(), URL: u.Status().URL, Binary: u.o.Binary, Prev: prev,
		Baseline: baseline, Started: time.Now().UTC()}
	if err := writeJSON(u.trialPath(), t); err != nil {
		if rerr := restoreBinary(u.o.Binary, prev); rerr != nil {
			slog.Error("ota: restoring the previous binary failed", "err", rerr)
		}
		return fmt.Errorf("recording the trial: %w", err)
	}
	slog.Info("ota: new binary in place; restarting into it", "binary", u.o.Binary, "version", ver, "previous", prev)
	u.progress(protocol.OTAInstall, 100, "installed "+ver)
	u.progress(protocol.OTAReboot, 0, "restarting into "+ver)
	if u.o.Restart != nil {
		u.o.Restart()
	}
	return nil
}

// tryBinary runs `<path> version`: a binary for another architecture, a truncated
// one or one that crashes at once is refused before it replaces anything.
func tryBinary(ctx context.Context, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
	}
	return string(bytes.TrimSpace(out)), nil
}

// swapBinary replaces bin by the file at newPath atomically: the new binary is copied
// next to bin and renamed over it, after the running one is linked to bin.prev. At
// any instant bin is a whole binary, old or new.
func swapBinary(bin, newPath string) (prev string, err error) {
	dir := filepath.Dir(bin)
	prev = bin + ".prev"
	staged := bin + ".new"
	if err := copyFile(newPath, staged, 0o755); err != nil {
		return "", fmt.Errorf("staging the new binary: %w", err)
	}
	os.Remove(prev)
	if err := os.Link(bin, prev); err != nil {
		if err := copyFile(bin, prev, 0o755); err != nil {
			os.Remove(staged)
			return "", fmt.Errorf("keeping the previous binary: %w", err)
		}
	}
	if err := os.Rename(staged, bin); err != nil {
		os.Remove(staged)
		return "", fmt.Errorf("swapping the binary: %w", err)
	}
	return prev, atomicfile.SyncDir(dir)
}

// restoreBinary puts the previous binary back, atomically, and keeps it as prev.
func restoreBinary(bin, prev string) error {
	staged := bin + ".rollback"
	os.Remove(staged)
	if err := os.Link(prev, staged); err != nil {
		if err := copyFile(prev, staged, 0o755); err != nil {
			return err
		}
	}
	if err := os.Rename(staged, bin); err != nil {
		return err
	}
	slog.Warn("ota: previous binary restored", "binary", bin)
	return atomicfile.SyncDir(filepath.Dir(bin))
}

func copyFile(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// BootCheck runs first thing at start-up, before anything that could crash: it
// counts the starts of a binary on trial, and when the new binary has already
// started maxStarts times without proving itself (it crashed, or was killed) it
// restores the previous one. rolledBack tells the caller to restart into it.
func BootCheck(stateDir string) (rolledBack bool, err error) {
	path := filepath.Join(stateDir, "ota", "trial.json")
	t, err := readJSON[trial](path)
	if err != nil || t.Mode != ModeBinary {
		return false, nil
	}
	t.Starts++
	if t.Starts <= maxStarts {
		return false, writeJSON(path, t)
	}
	slog.Error("ota: the updated binary started without proving itself; restoring the previous one", "starts", t.Starts-1)
	if err := restoreBinary(t.Binary, t.Prev); err != nil {
		return false, err
	}
	os.Remove(path)
	now := time.Now().UTC()
	st := protocol.OTAStatus{Mode: ModeBinary, Version: t.From, Phase: protocol.OTARolledBack, Percent: 100,
		URL: t.URL, Error: fmt.Sprintf("the new binary started %d times without becoming healthy", t.Starts-1), Updated: &now}
	return true, writeJSON(filepath.Join(stateDir, "ota", "last.json"), st)
}
