package vyubikey_test

import (
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-piv/piv-go/v2/piv"

	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey/pcscdtest"
)

// Tests through pcscd share one reader: they run one after another (no
// t.Parallel), and pcscdtest locks the reader against other test binaries.
// VYUBIKEY_TEST_VPCD picks another vpcd port (e.g. localhost:35964).

func TestMain(m *testing.M) { pcscdtest.Main(m) }

func testAddr() string {
	if a := os.Getenv("VYUBIKEY_TEST_VPCD"); a != "" {
		return a
	}
	return vyubikey.DefaultVPCDAddr
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testLogger logs the card's commands (instruction, status word) to the test
// log: the APDU trace shows up when a test fails or with -v.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newCard makes a card with a fresh state file (or the given one).
func newCard(t testing.TB, cfg vyubikey.Config) *vyubikey.Card {
	t.Helper()
	if cfg.StatePath == "" {
		cfg.StatePath = filepath.Join(t.TempDir(), "yk.json")
	}
	cfg.Logger = testLogger(t)
	c, err := vyubikey.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// plugNew makes a fresh card and plugs it into the test reader.
func plugNew(t testing.TB, cfg vyubikey.Config) *pcscdtest.Plugged {
	t.Helper()
	return pcscdtest.PlugCard(t, newCard(t, cfg), testAddr())
}

// open opens the card with piv-go; it is closed before the card is unplugged.
func open(t testing.TB, p *pcscdtest.Plugged) *piv.YubiKey {
	t.Helper()
	yk, err := piv.Open(p.Reader)
	if err != nil {
		t.Fatalf("piv.Open(%q): %v", p.Reader, err)
	}
	t.Cleanup(func() { yk.Close() })
	return yk
}

func rootPool(c *vyubikey.Card) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(c.AttestationRoot())
	return pool
}

func pcscdtestPlug(t testing.TB, c *vyubikey.Card) *pcscdtest.Plugged {
	t.Helper()
	return pcscdtest.PlugCard(t, c, testAddr())
}

func statePathOf(t testing.TB, c *vyubikey.Card) string {
	t.Helper()
	return c.StatePath()
}
