package appliance

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
)

// A module that shows no token (SOFTHSM2_CONF naming an empty token directory, as
// when the daemon does not see the operator's SOFTHSM2_CONF) and a module path that
// does not exist are problems, named with what to check; the set keeps them for the
// status document.
func TestPKCS11NothingSelectedIsAProblem(t *testing.T) {
	tok := softhsmtest.New(t, "unseen")
	empty := t.TempDir()
	conf := filepath.Join(empty, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+empty+"\nobjectstore.backend = file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	s := &pkcs11.Set{}
	defer s.Close()
	_, _, problems := s.Configure(context.Background(), pkcs11Selections([]config.PKCS11{
		{Module: tok.Module}, {Module: filepath.Join(empty, "libmissing.so")},
	}))
	if len(problems) != 2 || !strings.Contains(problems[0], "shows no initialised token") ||
		!strings.Contains(problems[0], "SOFTHSM2_CONF") || !strings.Contains(problems[1], "libmissing.so") {
		t.Fatalf("problems %q", problems)
	}
	if got := s.Problems(); len(got) != 2 {
		t.Errorf("Problems() = %q, want the two of the last Configure", got)
	}
}
