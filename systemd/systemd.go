// Package systemd tells systemd about the daemon through the notify socket (sd_notify):
// readiness, status, reloads, the shutdown and the watchdog pings.
package systemd

import (
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// Notifier tells systemd about the daemon through the notify socket: READY, STATUS,
// RELOADING (with MONOTONIC_USEC), STOPPING and the watchdog pings. Without
// NOTIFY_SOCKET every call does nothing, so the daemon runs the same under any other
// supervisor or none.
type Notifier struct {
	watchdog time.Duration

	mu      sync.Mutex
	status  string
	failing bool
}

// New reads NOTIFY_SOCKET and WATCHDOG_USEC (and WATCHDOG_PID, when systemd
// sets it for another process). The variables stay set: a re-exec'd daemon needs
// them too.
func New() *Notifier {
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		slog.Warn("WATCHDOG_USEC not understood; no watchdog pings", "err", err)
	}
	return &Notifier{watchdog: wd}
}

// Supervised reports whether systemd started this process (and will restart it).
func Supervised() bool {
	return os.Getenv("NOTIFY_SOCKET") != "" || os.Getenv("INVOCATION_ID") != ""
}

// WatchdogInterval is how often to ping: half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
// advises; 0 when systemd does not watch this process.
func (s *Notifier) WatchdogInterval() time.Duration { return s.watchdog / 2 }

// Ready says start-up (or a reload) is complete.
func (s *Notifier) Ready(status string) { s.send(daemon.SdNotifyReady, status) }

// Reloading says a reload began. MONOTONIC_USEC lets systemd match it to the reload
// it asked for (systemd 253+; older ones ignore it).
func (s *Notifier) Reloading(status string) {
	s.send(daemon.SdNotifyReloading+"\nMONOTONIC_USEC="+strconv.FormatInt(monotonicUsec(), 10), status)
}

// Stopping says the shutdown began.
func (s *Notifier) Stopping(status string) { s.send(daemon.SdNotifyStopping, status) }

// Status sets the one line `systemctl status` shows, when it changed.
func (s *Notifier) Status(status string) {
	s.mu.Lock()
	same := oneLine(status) == s.status
	s.mu.Unlock()
	if !same {
		s.send("", status)
	}
}

// Ping is one watchdog keep-alive. The caller decides whether the daemon is well
// enough to send it.
func (s *Notifier) Ping() {
	if s.watchdog > 0 {
		s.send(daemon.SdNotifyWatchdog, "")
	}
}

func (s *Notifier) send(state, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lines []string
	if state != "" {
		lines = append(lines, state)
	}
	if status != "" {
		s.status = oneLine(status)
		lines = append(lines, "STATUS="+s.status)
	}
	if len(lines) == 0 {
		return
	}
	_, err := daemon.SdNotify(false, strings.Join(lines, "\n"))
	switch {
	case err != nil && !s.failing:
		slog.Warn("systemd notification failed", "err", err)
		s.failing = true
	case err == nil && s.failing:
		slog.Info("systemd notifications work again")
		s.failing = false
	}
}

// oneLine keeps a status to one line: a newline would start another assignment in
// the notify message (a TOML parse error can carry one).
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, the clock systemd compares
// MONOTONIC_USEC with.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1e3 // Nano: Sec is 32 bits on armv7
}
