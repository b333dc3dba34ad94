//go:build wedgetest

package device

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"time"
)

// wedgeForTest, in binaries built with -tags wedgetest only, makes the command named by
// IOT_HSM_TEST_WEDGE=<command>[:<deadline>] hang on its worker forever, as a token
// call that never returns would, with the given request deadline. The end-to-end test
// uses it to see the watchdog pings stop.
func wedgeForTest(j *job) {
	cmd, deadline, _ := strings.Cut(os.Getenv("IOT_HSM_TEST_WEDGE"), ":")
	if cmd == "" || cmd != j.cmd {
		return
	}
	if d, err := time.ParseDuration(deadline); err == nil {
		j.deadline = d
	}
	slog.Warn("test build: this request wedges its worker", "cmd", j.cmd, "id", j.req.ID, "deadline", j.deadline)
	j.run = func(context.Context, *job) (any, error) {
		select {} // ignores its context, like a C call
	}
}
