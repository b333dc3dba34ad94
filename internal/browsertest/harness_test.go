// Package browsertest drives the web dashboard of the real iot-hsm binary in a real
// headless Chromium (Debian's chromium package) over the Chrome DevTools Protocol:
// the daemon runs on a SoftHSM2 token with a virtual YubiKey behind pcscd, and the
// browser does what an operator does.
package browsertest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
	"github.com/iot-hsm/iot-hsm/internal/testbin"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey/pcscdtest"
)

var repoRoot, _ = filepath.Abs(filepath.Join("..", ".."))

const (
	password = "browser test password"
	ykVPCD   = "localhost:35964"
	ykReader = "Virtual PCD 00 01"
	ykSerial = 31415926
	ykHSM    = "yubikey-31415926"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pcscdtest.StopPCSCD()
	testbin.Cleanup()
	os.Exit(code)
}

// chromiumPath finds Debian's chromium. It is missing only on a machine where `make
// deps` did not run: there the test skips, except in CI, where it must run.
func chromiumPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("chromium")
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed (make deps installs it); CI must run the browser test")
	}
	t.Skip("chromium is not installed; `make deps` installs it")
	return ""
}

// binary is iot-hsm as `make build` makes it.
func binary(t *testing.T) string { return testbin.Build(t) }

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// daemon is `iot-hsm run --dev` with the dashboard on and a virtual YubiKey in pcscd.
type daemon struct {
	url     string
	cert    *x509.Certificate // the dashboard's, as the daemon wrote it
	plugged *pcscdtest.Plugged
	log     *syncbuf.Buffer
}

func startDaemon(t *testing.T) *daemon {
	t.Helper()
	bin := binary(t)
	card, err := vyubikey.New(vyubikey.Config{Serial: ykSerial, StatePath: filepath.Join(t.TempDir(), "card.json")})
	if err != nil {
		t.Fatal(err)
	}
	pcscdtest.LockAllReaders(t) // the daemon's PIV backend looks at every reader
	plugged := pcscdtest.PlugCard(t, card, ykVPCD)
	pcscdtest.ProtectManagementKey(t, ykReader)

	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	roots := filepath.Join(dir, "attestation-roots.pem")
	if err := os.WriteFile(roots, ca.EncodeCertificatePEM(card.AttestationRoot()), 0o600); err != nil {
		t.Fatal(err)
	}
	webAddr := freePort(t)
	cfg := fmt.Sprintf("device_id = \"browser-lab\"\nstate_dir = %q\n\n[web]\nenabled = true\nlisten = %q\n\n"+
		"[yubikey]\npin = %q\nattestation_roots = %q\n", stateDir, webAddr, vyubikey.DefaultPIN, roots)
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// The password, as an operator sets it on the console.
	passwd := exec.Command(bin, "web", "passwd", "--config", cfgPath)
	passwd.Stdin = strings.NewReader(password + "\n" + password + "\n")
	if out, err := passwd.CombinedOutput(); err != nil {
		t.Fatalf("iot-hsm web passwd: %v\n%s", err, out)
	}
	log := &syncbuf.Buffer{}
	cmd := exec.Command(bin, "run", "--dev", "--config", cfgPath, "--dev-listen", freePort(t))
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", log.String())
		}
	})
	d := &daemon{url: "https://" + webAddr, plugged: plugged, log: log}
	d.cert = readCert(t, filepath.Join(stateDir, "web", "tls.crt"))
	waitServing(t, d)
	return d
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			if b, _ := pem.Decode(data); b != nil {
				c, err := x509.ParseCertificate(b.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dashboard certificate at %s", path)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitServing waits until the dashboard answers over TLS with the certificate on
// disk, verified as x509 (the only root is that certificate).
func waitServing(t *testing.T, d *daemon) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(d.cert)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := c.Get(d.url + "/login")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("dashboard not serving: %v\n%s", err, d.log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// spki is the base64 SHA-256 of the certificate's public key, as Chromium's
// --ignore-certificate-errors-spki-list takes it: the browser trusts this key only,
// as an operator who compared the fingerprint does.
func spki(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// browser starts headless Chromium, with no network but the dashboard.
func browser(t *testing.T, d *daemon) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", spki(d.cert)),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1000, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	// The first call starts the browser; its context must outlive the test's steps.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// replug connects the card again after Unplug without waiting to open it, as
// pcscdtest's Replug does: the daemon takes the card exclusively the moment it
// shows, and the page is what the test watches. The connection ends with the test.
// drop pulls the card and waits until pcscd shows the reader empty, as Unplug
// does: until then pcscd still shows the pulled card, and a card plugged in that
// moment (the next connection, the next test's) is taken for it.
func (d *daemon) replug(t *testing.T) (drop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.plugged.Card.Connect(ctx, d.plugged.Addr) }()
	var once sync.Once
	drop = func() {
		once.Do(func() {
			d.plugged.Card.Unplug()
			cancel()
			<-done
			if err := pcscdtest.WaitCard(d.plugged.Reader, false, 15*time.Second, nil); err != nil {
				t.Errorf("pulling the card: %v", err)
			}
		})
	}
	t.Cleanup(drop)
	return drop
}
