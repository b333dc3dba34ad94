package appliance

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/pkcs11"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
)

func TestRestartRequired(t *testing.T) {
	old := config.Default()
	cfg := config.Default()
	cfg.LogLevel, cfg.Service.HungGrace = "debug", 1 // applied live, not listed
	cfg.PKCS11 = []config.PKCS11{{Module: "/x.so"}}
	if got := restartRequired(old, cfg); len(got) != 0 {
		t.Errorf("live settings reported as needing a restart: %v", got)
	}
	cfg.DeviceID, cfg.MQTT.Broker, cfg.AllowDigest = "other", "ssl://b:8883", true
	cfg.YubiKey.PIN = "123456"
	if got := strings.Join(restartRequired(old, cfg), ","); got != "device_id,allow_digest,mqtt,yubikey" {
		t.Errorf("restart required for %s", got)
	}
	// [ota] is not applied live, and never silently ignored.
	cfg.OTA.PublicKeys = []string{"RWQnewkey"}
	if got := strings.Join(restartRequired(old, cfg), ","); got != "device_id,allow_digest,mqtt,yubikey,ota" {
		t.Errorf("with [ota] changed, restart required for %s", got)
	}
}

// TestPKCS11SetReload follows the PKCS#11 set through reloads: a module without a
// PIN, a wrong PIN tried once, the right one, a token created while the daemon runs,
// and a module dropped from the configuration.
func TestPKCS11SetReload(t *testing.T) {
	tok := softhsmtest.New(t, "set-a")
	ctx := context.Background()
	s := &pkcs11.Set{}
	defer s.Close()
	info := func(serial string) (hsm.Info, bool) {
		toks, err := s.Tokens(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range toks {
			if i := tk.Info(); i.Serial == serial {
				return i, true
			}
		}
		return hsm.Info{}, false
	}
	block := config.PKCS11{Module: tok.Module, Token: "pkcs11:serial=" + tok.Serial}

	applied, restart, problems := s.Configure(ctx, pkcs11Selections([]config.PKCS11{block}))
	if len(problems) != 0 || len(restart) != 0 || !hasPrefix(applied, "pkcs11 module") {
		t.Fatalf("first load: applied %v restart %v problems %v", applied, restart, problems)
	}
	if i, ok := info(tok.Serial); !ok || i.PIN.Set {
		t.Fatalf("no PIN configured: %+v %v", i, ok)
	}

	block.PIN = "0000"
	applied, _, _ = s.Configure(ctx, pkcs11Selections([]config.PKCS11{block}))
	if !hasPrefix(applied, "pkcs11 token pkcs11-"+tok.Serial+": PIN refused") {
		t.Fatalf("wrong PIN: applied %v", applied)
	}
	if applied, _, _ = s.Configure(ctx, pkcs11Selections([]config.PKCS11{block})); len(applied) != 0 {
		t.Fatalf("the same wrong PIN again: applied %v, want it not retried", applied)
	}
	block.PIN = tok.PIN
	applied, _, _ = s.Configure(ctx, pkcs11Selections([]config.PKCS11{block}))
	if !hasPrefix(applied, "pkcs11 token pkcs11-"+tok.Serial+": logged in") {
		t.Fatalf("right PIN: applied %v", applied)
	}
	if i, _ := info(tok.Serial); !i.PIN.Set {
		t.Fatal("right PIN: not logged in")
	}

	// A token created while the daemon runs shows after a reload (the module is
	// re-initialised) and is logged in by a block that selects every token.
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "set-b", "--pin", tok.PIN, "--so-pin", tok.SOPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util: %v: %s", err, out)
	}
	all := config.PKCS11{Module: tok.Module, PIN: tok.PIN}
	applied, _, problems = s.Configure(ctx, pkcs11Selections([]config.PKCS11{all}))
	if len(problems) != 0 || !hasPrefix(applied, "pkcs11 token") {
		t.Fatalf("new token: applied %v problems %v", applied, problems)
	}
	toks, _ := s.Tokens(ctx)
	loggedIn := 0
	for _, tk := range toks {
		if tk.Info().PIN.Set {
			loggedIn++
		}
	}
	if len(toks) != 2 || loggedIn != 2 {
		t.Fatalf("after the reload: %d tokens, %d logged in; want 2 and 2", len(toks), loggedIn)
	}

	// Dropped from the configuration: reported, and kept until restart.
	_, restart, _ = s.Configure(ctx, nil)
	if !hasPrefix(restart, "pkcs11 module "+tok.Module+" removed") {
		t.Fatalf("dropped module: restart %v", restart)
	}
	if _, ok := info(tok.Serial); !ok {
		t.Fatal("a dropped module's tokens vanished before the restart")
	}

	// A module that does not load is a problem, not a failure of the reload.
	_, _, problems = s.Configure(ctx, pkcs11Selections([]config.PKCS11{{Module: "/nonexistent/libnothing.so"}}))
	if !hasPrefix(problems, "pkcs11 module /nonexistent/libnothing.so") {
		t.Fatalf("missing module: problems %v", problems)
	}
}

func hasPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}
