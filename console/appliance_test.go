package console

import (
	"context"
	"crypto/x509/pkix"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/config"
	wiring "github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
)

// lab is a real appliance (the wiring `iot-hsm run` uses) over an empty SoftHSM2
// token, behind the embedded broker: what an operator's console talks to.
type lab struct {
	url, device, hsmID string
	tok                *softhsm.Token
	dir                string
}

func startLab(t *testing.T) *lab {
	t.Helper()
	return startLabWith(t, nil)
}

// startLabWith is startLab with the configuration changed by edit before start.
func startLabWith(t *testing.T, edit func(*config.Config)) *lab {
	t.Helper()
	clearEnv(t)
	url := startBroker(t)
	tok := softhsmtest.New(t, "console")
	l := &lab{url: url, device: "ihsm-console-" + randomHex(3), hsmID: "pkcs11-" + tok.Serial, tok: tok, dir: t.TempDir()}
	cfg := config.Default()
	cfg.DeviceID, cfg.StateDir = l.device, t.TempDir()
	cfg.MQTT.Broker, cfg.MQTT.AllowPlaintext, cfg.MQTT.ClientID = url, true, "iot-hsm-"+l.device
	cfg.Service.BrokerWait = 10 * time.Second
	cfg.Secrets.KeyFile = filepath.Join(t.TempDir(), "secrets.key")
	cfg.YubiKey.Disabled = true
	cfg.PKCS11 = []config.PKCS11{{Module: tok.Module, Token: "pkcs11:serial=" + tok.Serial, PIN: tok.PIN}}
	if edit != nil {
		edit(cfg)
	}
	ctx := context.Background()
	app, err := wiring.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A reload re-reads the same configuration, as the daemon's would an unchanged file.
	reload := func(ctx context.Context) (any, error) { return app.Reload(ctx, cfg, nil), nil }
	if err := app.Start(ctx, wiring.Hooks{Version: "test", Reload: reload}); err != nil {
		app.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		app.Device.Stop()
		app.Client.Close(100 * time.Millisecond)
		app.Close()
	})
	deadline := time.Now().Add(10 * time.Second)
	for !app.Client.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("the appliance has no broker session after 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return l
}

// console runs `iot-hsm console --broker <lab> --device <lab> args...` without a
// terminal, as a script would.
func (l *lab) console(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return run(t, "", append([]string{"--broker", l.url, "--device", l.device}, args...)...)
}

// provCert writes a provisioning certificate for a CA named cn.
func (l *lab) provCert(t *testing.T, cn string, pathLen int) string {
	t.Helper()
	p, err := ca.MakeProvisioningCert(ca.ProvisioningOptions{Subject: pkix.Name{CommonName: cn}, Validity: 24 * time.Hour, MaxPathLen: pathLen})
	if err != nil {
		t.Fatal(err)
	}
	return l.write(t, strings.ReplaceAll(cn, " ", "-")+"-prov.pem", string(p))
}

func (l *lab) write(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(l.dir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// opensslVerify is what an operator checks a CA certificate with.
func opensslVerify(t *testing.T, rootFile, certFile string) {
	t.Helper()
	out, err := exec.Command("openssl", "verify", "-CAfile", rootFile, certFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Errorf("openssl verify -CAfile %s %s: %v\n%s", rootFile, certFile, err, out)
	}
}

// terminal is a pseudo-terminal: the console gets its slave as stdin, stdout and
// stderr; the test types on the master and reads the screen from it.
type terminal struct {
	t      *testing.T
	master *os.File
	slave  *os.File
	screen *syncbuf.Buffer
	seen   int // how far expect has read the screen
}

func newTerminal(t *testing.T) *terminal {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err == nil {
		err = unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0)
	}
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	term := &terminal{t: t, master: m, slave: s, screen: &syncbuf.Buffer{}}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			term.screen.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { s.Close(); m.Close() })
	return term
}

// run runs the console on the terminal in the background; the channel gets its
// exit status.
func (term *terminal) run(args ...string) <-chan int {
	done := make(chan int, 1)
	go func() { done <- Run(args, term.slave, term.slave, term.slave) }()
	return done
}

// expect waits for text to appear on the screen after what was already expected.
func (term *terminal) expect(text string) {
	term.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		scr := term.screen.String()
		if i := strings.Index(scr[term.seen:], text); i >= 0 {
			term.seen += i + len(text)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	term.t.Fatalf("%q did not appear on the screen:\n%s", text, term.screen.String()[term.seen:])
}

// answer waits for the question and types the answer with Enter.
func (term *terminal) answer(question, keys string) {
	term.t.Helper()
	term.expect(question)
	if _, err := term.master.Write([]byte(keys + "\n")); err != nil {
		term.t.Fatal(err)
	}
}

func (term *terminal) exit(done <-chan int) int {
	term.t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(2 * time.Minute):
		term.t.Fatalf("the console did not finish:\n%s", term.screen.String())
	}
	return -1
}
