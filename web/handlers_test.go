package web_test

import (
	"bufio"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/web"
)

func TestNotLoggedIn(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	for _, path := range []string{"/", "/provision", "/wizard?slot=x/01", "/slot?slot=x/01", "/audit", "/ota", "/system", "/sign?slot=x", "/clear?slot=x", "/pin?hsm=x"} {
		if p := b.get(path); p.status != http.StatusSeeOther || p.location != "/login" {
			t.Errorf("GET %s without a login: %d %q, want a redirect to /login", path, p.status, p.location)
		}
	}
	if p := b.get("/events"); p.status != http.StatusUnauthorized {
		t.Errorf("GET /events without a login: %d, want 401", p.status)
	}
	for _, path := range []string{"/reload", "/restart", "/provision", "/clear", "/pin", "/sign", "/wizard/root", "/wizard/import", "/ota", "/logout"} {
		p := b.post(path, url.Values{"csrf": {"x"}})
		if p.status != http.StatusUnauthorized || !strings.Contains(p.body, web.ErrNotLoggedIn.Error()) {
			t.Errorf("POST %s without a login: %d, want 401 saying %q", path, p.status, web.ErrNotLoggedIn)
		}
	}
	if got := l.audit(); len(got) != 0 {
		t.Errorf("refused requests reached the device: %v", got)
	}
}

func TestLoginWrongPasswordAndRateLimit(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	if p := b.get("/login"); p.status != http.StatusOK || !strings.Contains(p.body, `type="password"`) {
		t.Fatalf("login page: %d", p.status)
	}
	for i := range 5 {
		p := b.post("/login", url.Values{"password": {"wrong password " + string(rune('a'+i))}})
		if p.status != http.StatusUnauthorized || !strings.Contains(p.body, web.ErrBadPassword.Error()) {
			t.Fatalf("wrong password %d: %d, want 401 %q", i, p.status, web.ErrBadPassword)
		}
		if len(p.header["Set-Cookie"]) != 0 {
			t.Fatalf("a failed login set a cookie: %v", p.header["Set-Cookie"])
		}
	}
	// The sixth try is refused unchecked, the right password included.
	p := b.post("/login", url.Values{"password": {testPassword}})
	if p.status != http.StatusTooManyRequests || !strings.Contains(p.body, web.ErrRateLimited.Error()) {
		t.Fatalf("after 5 failures: %d, want 429 %q", p.status, web.ErrRateLimited)
	}
	if p := b.get("/"); p.status != http.StatusSeeOther {
		t.Fatalf("rate-limited login still logged in: %d", p.status)
	}
	if strings.Contains(l.logs.String(), "wrong password a") || strings.Contains(l.logs.String(), testPassword) {
		t.Fatal("a password reached the log")
	}
}

func TestSessionCookie(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	p := b.post("/login", url.Values{"password": {testPassword}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("login: %d", p.status)
	}
	c := p.header.Get("Set-Cookie")
	for _, attr := range []string{"HttpOnly", "Secure", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(c, attr) {
			t.Errorf("session cookie %q lacks %s", c, attr)
		}
	}
	home := b.get("/")
	if home.status != http.StatusOK || !strings.Contains(home.body, l.hsmID) {
		t.Fatalf("home after login: %d\n%s", home.status, home.body)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "Strict-Transport-Security"} {
		if home.header.Get(h) == "" {
			t.Errorf("home page without %s", h)
		}
	}
	if p := b.post("/logout", url.Values{}); p.status != http.StatusSeeOther {
		t.Fatalf("logout: %d", p.status)
	}
	if p := b.get("/"); p.status != http.StatusSeeOther {
		t.Fatalf("after logout: %d, want a redirect", p.status)
	}
}

func TestCSRF(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	b.login()
	for name, form := range map[string]url.Values{
		"missing": {"csrf": {""}},
		"wrong":   {"csrf": {b.csrf + "x"}},
	} {
		p := b.post("/reload", form)
		if p.status != http.StatusForbidden || !strings.Contains(p.body, "CSRF") {
			t.Errorf("reload with the CSRF token %s: %d, want 403", name, p.status)
		}
	}
	req, _ := http.NewRequest("POST", l.base+"/reload", strings.NewReader(url.Values{"csrf": {b.csrf}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	if p := b.do(req); p.status != http.StatusForbidden {
		t.Errorf("reload from another origin: %d, want 403", p.status)
	}
	if got := l.audit(); len(got) != 0 {
		t.Fatalf("a refused form reached the device: %v", got)
	}
	p := b.post("/reload", url.Values{})
	if p.status != http.StatusOK || !strings.Contains(p.body, `id="reload-result"`) {
		t.Fatalf("reload with the token: %d\n%s", p.status, p.body)
	}
	if got := l.audit(); !slices.Contains(got, "web:admin reload ok") {
		t.Fatalf("audit trail: %v, want web:admin reload ok", got)
	}
}

func TestSetupOnlyFromLoopback(t *testing.T) {
	dir := t.TempDir()
	srv, err := web.New(web.Options{Dir: dir, Listen: "127.0.0.1:0", SessionTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	h := srv.Handler()
	form := url.Values{"password": {testPassword}, "confirm": {testPassword}}.Encode()
	req := httptest.NewRequest("POST", "/setup", strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = "192.0.2.7:40000"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden || web.HasPassword(dir) {
		t.Fatalf("setup from the network: %d, password set %v; want 403 and none", rec.Code, web.HasPassword(dir))
	}
	req = httptest.NewRequest("POST", "/setup", strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = "127.0.0.1:40000"
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther || !web.HasPassword(dir) {
		t.Fatalf("setup from loopback: %d", rec.Code)
	}
	if err := web.CheckPassword(dir, testPassword); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(web.PasswordFile(dir))
	if strings.Contains(string(data), testPassword) || !strings.HasPrefix(string(data), "$argon2id$") {
		t.Fatalf("password file holds %q, want only an argon2id hash", data)
	}
	// Once set, the setup page is closed to loopback too.
	req = httptest.NewRequest("POST", "/setup", strings.NewReader(url.Values{"password": {"another password"}, "confirm": {"another password"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = "127.0.0.1:40000"
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden || web.CheckPassword(dir, testPassword) != nil {
		t.Fatalf("second setup: %d", rec.Code)
	}
}

func TestFirstVisitSetsThePassword(t *testing.T) {
	l := newLab(t, false)
	b := l.browser()
	if p := b.get("/"); p.location != "/setup" {
		t.Fatalf("first visit: %d %q, want /setup", p.status, p.location)
	}
	if p := b.post("/setup", url.Values{"password": {"short"}, "confirm": {"short"}}); p.status != http.StatusBadRequest {
		t.Fatalf("short password: %d", p.status)
	}
	p := b.post("/setup", url.Values{"password": {testPassword}, "confirm": {testPassword}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("setup: %d\n%s", p.status, p.body)
	}
	if p := b.get("/"); p.status != http.StatusOK {
		t.Fatalf("after setup: %d", p.status)
	}
}

func TestStatusShowsTheFingerprint(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	req, _ := http.NewRequest("GET", l.base+"/login", nil)
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	served := web.Fingerprint(resp.TLS.PeerCertificates[0].Raw)
	st := l.app.Device.Status()
	if st.Web == nil || st.Web.Fingerprint != served || !st.Web.TLS {
		t.Fatalf("status web: %+v, want the served certificate's %s", st.Web, served)
	}
	// The key stays on the data partition, readable by the service only.
	fi, err := os.Stat(filepath.Join(appliance.WebDir(l.stateDir), "tls.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("tls.key: %v %v", fi, err)
	}
}

func TestWizardRootIntermediateAndViews(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	b.login()
	rootID, root := provisionRoot(t, b, l.hsmID, "01", "Web Root CA")
	interID := l.hsmID + "/02"
	p := b.post("/provision", url.Values{"hsm": {l.hsmID}, "slot": {"02"}, "mode": {"generate"}, "key_type": {"p256"}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("provision 02: %d\n%s", p.status, p.body)
	}
	p = b.post("/wizard/csr", url.Values{"slot": {interID}, "provisioning_cert": {string(pkitest.ProvisioningCert(t, "Web Issuing CA", 0))}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("csr: %d\n%s", p.status, p.body)
	}
	// Resuming the wizard shows the CSR to copy out.
	wiz := b.get(p.location)
	csr := pre(t, wiz.body, "csr-pem")
	if !strings.Contains(wiz.body, "csr_pending") || !strings.Contains(csr, "BEGIN CERTIFICATE REQUEST") {
		t.Fatalf("wizard after the CSR:\n%s", wiz.body)
	}
	// A certificate for another key (the root's) is refused and changes nothing.
	p = b.post("/wizard/import", url.Values{"slot": {interID}, "certificate": {pemOf(root)}})
	if p.status != http.StatusBadRequest || !strings.Contains(p.body, "bad_request") {
		t.Fatalf("import of another key's certificate: %d\n%s", p.status, p.body)
	}
	if st := slotState(l, interID); st != "csr_pending" {
		t.Fatalf("after a refused import: %s, want csr_pending", st)
	}
	// The root on this appliance signs it from its own page.
	p = b.post("/sign", url.Values{"slot": {rootID}, "csr": {csr}, "validity": {"8760h"}, "is_ca": {"on"}, "max_path_len": {"0"}})
	if p.status != http.StatusOK {
		t.Fatalf("sign: %d\n%s", p.status, p.body)
	}
	issued := pre(t, p.body, "issued-pem")
	p = b.post("/wizard/import", url.Values{"slot": {interID}, "certificate": {issued}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("import: %d\n%s", p.status, p.body)
	}
	view := b.get(p.location)
	if view.status != http.StatusOK || !strings.Contains(view.body, "CN=Web Issuing CA") || !strings.Contains(view.body, "CN=Web Root CA") {
		t.Fatalf("certificate page: %d\n%s", view.status, view.body)
	}
	dl := b.get("/slot/cert.pem?slot=" + url.QueryEscape(interID))
	if !strings.Contains(dl.header.Get("Content-Disposition"), "attachment") {
		t.Fatalf("download: %v", dl.header)
	}
	inter := parseCert(t, dl.body)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := inter.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the downloaded intermediate does not verify under the root: %v", err)
	}
	pkitest.OpenSSLVerify(t, inter, []*x509.Certificate{root})
	// The chain, found among this appliance's CAs, comes with it when asked.
	full := b.get("/slot/cert.pem?chain=1&slot=" + url.QueryEscape(interID))
	if !strings.Contains(pre(t, view.body, "chain-pem"), pemOf(root)) || !strings.HasSuffix(full.body, pemOf(root)) {
		t.Fatalf("the chain lacks the root:\n%s", full.body)
	}
	want := []string{"web:admin slot.provision ok", "web:admin slot.selfsign ok", "web:admin slot.csr ok",
		"web:admin slot.import_cert bad_request", "web:admin sign ok", "web:admin slot.import_cert ok"}
	for _, w := range want {
		if !slices.Contains(l.audit(), w) {
			t.Errorf("audit trail lacks %q: %v", w, l.audit())
		}
	}
	au := b.get("/audit")
	if au.status != http.StatusOK || !strings.Contains(au.body, "Hash chain verified") || !strings.Contains(au.body, "web:admin") {
		t.Fatalf("audit page: %d\n%s", au.status, au.body)
	}
}

// provisionRoot runs the wizard for a self-signed root and returns its certificate
// as the certificate page shows it.
func provisionRoot(t *testing.T, b *browser, hsmID, slot, cn string) (string, *x509.Certificate) {
	t.Helper()
	slotID := hsmID + "/" + slot
	if p := b.get("/provision?hsm=" + url.QueryEscape(hsmID)); p.status != http.StatusOK || !strings.Contains(p.body, "Provision a New Slot") {
		t.Fatalf("provision page: %d", p.status)
	}
	p := b.post("/provision", url.Values{"hsm": {hsmID}, "slot": {slot}, "mode": {"generate"}, "key_type": {"p256"}})
	if p.status != http.StatusSeeOther || !strings.HasPrefix(p.location, "/wizard?slot=") {
		t.Fatalf("provision: %d %q\n%s", p.status, p.location, p.body)
	}
	if w := b.get(p.location); !strings.Contains(w.body, "key_ready") {
		t.Fatalf("wizard: %s", w.body)
	}
	p = b.post("/wizard/root", url.Values{"slot": {slotID}, "provisioning_cert": {string(pkitest.ProvisioningCert(t, cn, 1))}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("root: %d\n%s", p.status, p.body)
	}
	view := b.get(p.location)
	c := parseCert(t, pre(t, view.body, "cert-pem"))
	if c.Subject.CommonName != cn || c.CheckSignatureFrom(c) != nil || !c.IsCA {
		t.Fatalf("root certificate: %s, CA %v", c.Subject, c.IsCA)
	}
	pkitest.OpenSSLVerify(t, c, []*x509.Certificate{c})
	return slotID, c
}

func slotState(l *lab, slotID string) string {
	for _, s := range l.app.Device.Status().Slots {
		if s.SlotID == slotID {
			return s.State
		}
	}
	return ""
}

func TestWrongPIN(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	b.login()
	if p := b.get("/pin?hsm=" + url.QueryEscape(l.hsmID)); p.status != http.StatusOK {
		t.Fatalf("pin page: %d", p.status)
	}
	const wrong = "99999999"
	p := b.post("/pin", url.Values{"hsm": {l.hsmID}, "pin": {wrong}})
	if p.status != http.StatusForbidden || !strings.Contains(p.body, "pin_incorrect") {
		t.Fatalf("wrong PIN: %d\n%s", p.status, p.body)
	}
	if strings.Contains(p.body, wrong) || strings.Contains(l.logs.String(), wrong) {
		t.Fatal("the PIN came back in the page or the log")
	}
	p = b.post("/pin", url.Values{"hsm": {l.hsmID}, "pin": {l.tok.PIN}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("right PIN: %d\n%s", p.status, p.body)
	}
	if !slices.Contains(l.audit(), "web:admin hsm.set_pin pin_incorrect") {
		t.Fatalf("audit: %v", l.audit())
	}
}

func TestClearNeedsConfirmation(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	b.login()
	slotID, _ := provisionRoot(t, b, l.hsmID, "03", "Doomed Root")
	p := b.get("/clear?slot=" + url.QueryEscape(slotID))
	if p.status != http.StatusOK || !strings.Contains(p.body, "CN=Doomed Root") {
		t.Fatalf("confirmation page does not name the subject: %d\n%s", p.status, p.body)
	}
	p = b.post("/clear", url.Values{"slot": {slotID}, "confirm": {"yes"}, "destroy_key": {"on"}})
	if p.status != http.StatusBadRequest || slotState(l, slotID) != "provisioned" {
		t.Fatalf("clear without the slot's id: %d, state %s", p.status, slotState(l, slotID))
	}
	p = b.post("/clear", url.Values{"slot": {slotID}, "confirm": {slotID}, "destroy_key": {"on"}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("clear: %d\n%s", p.status, p.body)
	}
	if st := slotState(l, slotID); st != "" && st != "empty" {
		t.Fatalf("after clear: %s", st)
	}
	if !slices.Contains(l.audit(), "web:admin slot.clear ok") {
		t.Fatalf("audit: %v", l.audit())
	}
}

func TestRestartOTAAndPages(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	b.login()
	for _, path := range []string{"/system", "/ota", "/audit", "/provision", "/static/app.js", "/static/app.css"} {
		if p := b.get(path); p.status != http.StatusOK {
			t.Errorf("GET %s: %d", path, p.status)
		}
	}
	if p := b.get("/ota"); !strings.Contains(p.body, `id="ota-progress"`) {
		t.Errorf("OTA page without its progress bar")
	}
	if p := b.get("/slot?slot=" + url.QueryEscape(l.hsmID+"/7f")); p.status != http.StatusNotFound || !strings.Contains(p.body, "not_found") {
		t.Errorf("unknown slot: %d", p.status)
	}
	p := b.post("/ota", url.Values{"url": {"https://updates.example.com/iot-hsm"}, "sha256": {strings.Repeat("ab", 32)}, "size": {"1000"}})
	if p.status != http.StatusNotImplemented || !strings.Contains(p.body, "unsupported") {
		t.Errorf("update with [ota] off: %d, want 501 unsupported\n%s", p.status, p.body)
	}
	p = b.post("/restart", url.Values{})
	if p.status != http.StatusOK || !strings.Contains(p.body, "restarting") {
		t.Fatalf("restart: %d\n%s", p.status, p.body)
	}
	select {
	case <-l.restarts:
	case <-time.After(10 * time.Second):
		t.Fatal("restart answered but never asked for")
	}
}

func TestEventsStreamLiveStatus(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	b.login()
	req, _ := http.NewRequest("GET", l.base+"/events", nil)
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, ct)
	}
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitFor := func(what string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("stream ended before %q", what)
				}
				if strings.Contains(line, what) {
					return
				}
			case <-deadline:
				t.Fatalf("no %q on the stream", what)
			}
		}
	}
	waitFor(l.hsmID)
	// A slot provisioned elsewhere (here another browser) shows on this stream.
	other := l.browser()
	other.login()
	if p := other.post("/provision", url.Values{"hsm": {l.hsmID}, "slot": {"05"}, "mode": {"generate"}, "key_type": {"p256"}}); p.status != http.StatusSeeOther {
		t.Fatalf("provision: %d", p.status)
	}
	waitFor(`data-slot="` + l.hsmID + `/05"`)
	// An update's progress reaches the page as it is published.
	l.app.Device.OTAEvent(protocol.OTAEvent{Phase: protocol.OTADownload, Percent: 40})
	waitFor("event: ota")
	waitFor(`"percent":40`)
}

func TestAuditPageShowsTampering(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	b.login()
	if p := b.post("/reload", url.Values{}); p.status != http.StatusOK {
		t.Fatalf("reload: %d", p.status)
	}
	if p := b.get("/audit"); !strings.Contains(p.body, "Hash chain verified: 1 records") {
		t.Fatalf("audit page before tampering:\n%s", p.body)
	}
	path := filepath.Join(l.stateDir, "audit.log")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(data), "web:admin", "web:eve", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if p := b.get("/audit"); !strings.Contains(p.body, "does not verify") {
		t.Fatalf("audit page after tampering:\n%s", p.body)
	}
}

func TestOverwriteNeedsConfirmation(t *testing.T) {
	l := newLab(t, true)
	b := l.browser()
	b.login()
	slotID, root := provisionRoot(t, b, l.hsmID, "04", "Kept Root")
	form := url.Values{"hsm": {l.hsmID}, "slot": {"04"}, "mode": {"generate"}, "key_type": {"p256"}, "overwrite": {"on"}}
	p := b.post("/provision", form)
	if p.status != http.StatusBadRequest || !strings.Contains(p.body, "CN=Kept Root") || !strings.Contains(p.body, `id="confirm-overwrite"`) {
		t.Fatalf("overwrite without confirmation: %d\n%s", p.status, p.body)
	}
	view := b.get("/slot?slot=" + url.QueryEscape(slotID))
	if got := parseCert(t, pre(t, view.body, "cert-pem")); !got.Equal(root) {
		t.Fatal("an unconfirmed overwrite changed the slot")
	}
	form.Set("confirm", slotID)
	if p := b.post("/provision", form); p.status != http.StatusSeeOther {
		t.Fatalf("confirmed overwrite: %d\n%s", p.status, p.body)
	}
	if st := slotState(l, slotID); st != "key_ready" {
		t.Fatalf("after the overwrite: %s, want key_ready", st)
	}
}
