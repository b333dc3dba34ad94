package web_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/web"
)

const testPassword = "correct horse battery"

// lab is an appliance on a SoftHSM2 token with the dashboard on, built by the one
// wiring `iot-hsm run` uses.
type lab struct {
	t        *testing.T
	app      *appliance.Appliance
	tok      *softhsm.Token
	hsmID    string
	stateDir string
	base     string
	roots    *x509.CertPool
	logs     *syncbuf.Buffer
	restarts chan struct{}
}

// newLab starts the appliance; withPassword sets the dashboard password first, as
// `iot-hsm web passwd` does.
func newLab(t *testing.T, withPassword bool) *lab {
	t.Helper()
	logs := &syncbuf.Buffer{}
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(prev) })

	tok := softhsmtest.New(t, "web")
	broker, err := mqtt.StartBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broker.Close() })
	cfg := config.Default()
	cfg.DeviceID, cfg.StateDir = "web-lab", t.TempDir()
	cfg.MQTT.Broker, cfg.MQTT.AllowPlaintext, cfg.MQTT.ClientID = broker.URL(), true, "iot-hsm-web-lab"
	cfg.Service.BrokerWait = 10 * time.Second
	cfg.Secrets.KeyFile = filepath.Join(t.TempDir(), "secrets.key")
	cfg.YubiKey.Disabled = true
	cfg.PKCS11 = []config.PKCS11{{Module: tok.Module, Token: "pkcs11:serial=" + tok.Serial, PIN: tok.PIN}}
	cfg.Web = config.Web{Enabled: true, Listen: "127.0.0.1:0"}
	if withPassword {
		if err := web.SetPassword(appliance.WebDir(cfg.StateDir), testPassword); err != nil {
			t.Fatal(err)
		}
	}
	l := &lab{t: t, tok: tok, hsmID: "pkcs11-" + tok.Serial, stateDir: cfg.StateDir, logs: logs, restarts: make(chan struct{}, 1)}
	ctx := context.Background()
	app, err := appliance.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	hooks := appliance.Hooks{Version: "test",
		Reload: func(context.Context) (any, error) {
			return protocol.ReloadResult{Applied: []string{"pkcs11"}, HSMs: 1, HSMsPresent: 1}, nil
		},
		Restart: func() { l.restarts <- struct{}{} },
	}
	if err := app.Start(ctx, hooks); err != nil {
		app.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		app.Stop()
		app.Close()
	})
	l.app, l.base = app, "https://"+app.WebAddr()
	pemData, err := os.ReadFile(filepath.Join(appliance.WebDir(cfg.StateDir), "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	l.roots = x509.NewCertPool()
	if !l.roots.AppendCertsFromPEM(pemData) {
		t.Fatal("tls.crt holds no certificate")
	}
	return l
}

// browser is one browser: its cookies, and the last page's CSRF token.
type browser struct {
	l    *lab
	c    *http.Client
	csrf string
}

// browser trusts only the appliance's own certificate: the test checks what an
// operator who compared the fingerprint would have.
func (l *lab) browser() *browser {
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 60 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: l.roots}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &browser{l: l, c: c}
}

type page struct {
	status   int
	body     string
	location string
	header   http.Header
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (b *browser) do(req *http.Request) page {
	b.l.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.l.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	p := page{status: resp.StatusCode, body: string(body), location: resp.Header.Get("Location"), header: resp.Header}
	if m := csrfRE.FindStringSubmatch(p.body); m != nil {
		b.csrf = m[1]
	}
	return p
}

func (b *browser) get(path string) page {
	b.l.t.Helper()
	req, _ := http.NewRequest("GET", b.l.base+path, nil)
	return b.do(req)
}

// post sends a form with the page's CSRF token (unless form sets csrf itself).
func (b *browser) post(path string, form url.Values) page {
	b.l.t.Helper()
	if _, ok := form["csrf"]; !ok && b.csrf != "" {
		form.Set("csrf", b.csrf)
	}
	req, _ := http.NewRequest("POST", b.l.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

func (b *browser) login() {
	b.l.t.Helper()
	p := b.post("/login", url.Values{"password": {testPassword}})
	if p.status != http.StatusSeeOther || p.location != "/" {
		b.l.t.Fatalf("login: %d %s\n%s", p.status, p.location, p.body)
	}
	b.get("/") // the session's CSRF token
}

// pre returns the text of the <pre id=id> on a page.
func pre(t *testing.T, body, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<pre id="` + id + `">(.*?)</pre>`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no <pre id=%q> on the page:\n%s", id, body)
	}
	return html.UnescapeString(m[1])
}

func parseCert(t *testing.T, pemText string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(pemText))
	if b == nil {
		t.Fatalf("no PEM block in %q", pemText)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// auditRequesters returns "requester cmd result" of every record of the trail.
func (l *lab) audit() []string {
	var out []string
	for _, r := range l.app.Audit.Tail(1000) {
		out = append(out, r.Requester+" "+r.Command+" "+r.Result)
	}
	return out
}

func pemOf(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}
