package browsertest

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"image/png"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/iot-hsm/iot-hsm/internal/pkitest"
)

// screenshotDir is where the screenshots go: docs/web when WEB_SCREENSHOTS=1 (to
// refresh the documentation's), a temporary directory otherwise.
func screenshotDir(t *testing.T) string {
	if os.Getenv("WEB_SCREENSHOTS") == "1" {
		dir := filepath.Join(repoRoot, "docs", "web")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	return t.TempDir()
}

// tab runs the test's steps in one browser tab, each step bounded.
type tab struct {
	t   *testing.T
	ctx context.Context
	d   *daemon
}

func (b *tab) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 90*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v\npage: %s\ndaemon log:\n%s", what, err, b.pageText(), b.d.log.String())
	}
}

// pageText is what the page says, for a failure's message.
func (b *tab) pageText() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
	if err != nil {
		return err.Error()
	}
	return s
}

func (b *tab) text(sel string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

// until waits for a JavaScript condition on the page.
func until(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(45*time.Second))
}

func css(sel string) chromedp.CSS { return chromedp.CSS(sel) }

func TestDashboardInChromium(t *testing.T) {
	d := startDaemon(t)
	b := &tab{t: t, ctx: browser(t, d), d: d}
	shots := screenshotDir(t)

	b.do("log in",
		chromedp.Navigate(d.url+"/"),
		chromedp.WaitVisible(css(`input[name=password]`)),
		chromedp.SendKeys(css(`input[name=password]`), password),
		chromedp.Submit(css(`input[name=password]`)),
		chromedp.WaitVisible(css(`tr[data-hsm^="pkcs11-"]`)),
	)
	softID := strings.TrimSpace(b.text(`tr[data-hsm^="pkcs11-"] td`))
	root := b.wizardRoot(softID, "01")
	interID := b.wizardIntermediate(softID, "02", softID+"/01", shots)
	inter := parseCert(t, b.text(`#cert-pem`))
	if subject := b.text(`#subject`); !strings.Contains(subject, "Browser Issuing CA") || inter.Subject.CommonName != "Browser Issuing CA" {
		t.Fatalf("certificate page shows %q", subject)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := inter.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the intermediate does not verify under the root: %v", err)
	}
	pkitest.OpenSSLVerify(t, inter, []*x509.Certificate{root})

	b.yubiKeyLive(interID, shots)
	b.do("phone width", chromedp.EmulateViewport(390, 844), chromedp.Reload(), chromedp.WaitVisible(css(`#live`)))
	screenshot(b, shots, "phone.png")
}

// wizardRoot runs the wizard for a self-signed root and returns its certificate as
// the certificate page shows it.
func (b *tab) wizardRoot(hsmID, slot string) *x509.Certificate {
	b.t.Helper()
	b.do("wizard: root",
		chromedp.Navigate(b.d.url+"/provision?hsm="+url.QueryEscape(hsmID)),
		chromedp.WaitVisible(css(`#provision`)),
		chromedp.SetValue(css(`#provision input[name=slot]`), slot),
		chromedp.Click(css(`#provision button`)),
		chromedp.WaitVisible(css(`#provcert`)),
		chromedp.SetValue(css(`#provcert textarea`), string(pkitest.ProvisioningCert(b.t, "Browser Root CA", 1))),
		chromedp.Click(css(`#root`)),
		chromedp.WaitVisible(css(`#cert-fields`)),
	)
	return parseCert(b.t, b.text(`#cert-pem`))
}

// wizardIntermediate runs the wizard for an intermediate: the CSR is copied out of
// its dialog, the root signs it on its Sign page, and the certificate goes back in.
// It ends on the intermediate's certificate page.
func (b *tab) wizardIntermediate(hsmID, slot, rootID, shots string) string {
	b.t.Helper()
	slotID := hsmID + "/" + slot
	b.do("wizard: intermediate CSR",
		chromedp.Navigate(b.d.url+"/provision?hsm="+url.QueryEscape(hsmID)),
		chromedp.WaitVisible(css(`#provision`)),
		chromedp.SetValue(css(`#provision input[name=slot]`), slot),
		chromedp.Click(css(`#provision button`)),
		chromedp.WaitVisible(css(`#provcert`)),
		chromedp.SetValue(css(`#provcert textarea`), string(pkitest.ProvisioningCert(b.t, "Browser Issuing CA", 0))),
		chromedp.Click(css(`#csr`)),
		chromedp.WaitVisible(css(`#csr-dialog`)),
		chromedp.Click(css(`#csr-dialog button[data-copy]`)),
		until(`document.querySelector('#csr-dialog button[data-copy]').textContent === 'Copied'`),
	)
	screenshot(b, shots, "wizard.png")
	csr := b.text(`#csr-pem`)
	if !strings.Contains(csr, "BEGIN CERTIFICATE REQUEST") {
		b.t.Fatalf("CSR on the page: %q", csr)
	}
	b.do("sign with the root",
		chromedp.Click(css(`#csr-close`)),
		chromedp.Navigate(b.d.url+"/sign?slot="+url.QueryEscape(rootID)),
		chromedp.WaitVisible(css(`#sign`)),
		chromedp.SetValue(css(`#sign textarea[name=csr]`), csr),
		chromedp.SetValue(css(`#sign input[name=validity]`), "8760h"),
		chromedp.Click(css(`#sign button`)),
		chromedp.WaitVisible(css(`#issued-pem`)),
	)
	issued := b.text(`#issued-pem`)
	b.do("import",
		chromedp.Navigate(b.d.url+"/wizard?slot="+url.QueryEscape(slotID)),
		chromedp.WaitVisible(css(`#import`)),
		chromedp.SetValue(css(`#import textarea[name=certificate]`), issued),
		chromedp.Click(css(`#import button`)),
		chromedp.WaitVisible(css(`#cert-fields`)),
		chromedp.WaitVisible(css(`#chain-pem`)),
	)
	return slotID
}

// yubiKeyLive pulls the YubiKey and plugs it back: the home page follows by itself,
// with no reload (a marker set in the page survives).
func (b *tab) yubiKeyLive(slotID, shots string) {
	b.t.Helper()
	presence := `(document.querySelector('tr[data-hsm="` + ykHSM + `"] .presence') || {}).textContent`
	b.do("home page with the YubiKey",
		chromedp.Navigate(b.d.url+"/"),
		chromedp.WaitVisible(css(`tr[data-slot="`+slotID+`"]`)),
		until(presence+` === 'present'`),
		chromedp.Evaluate[chromedp.Void](`window.notReloaded = true`),
	)
	screenshot(b, shots, "home.png")
	b.d.plugged.Unplug(b.t)
	b.do("the page shows the YubiKey absent", until(presence+` === 'absent' && window.notReloaded === true`))
	back := presence + ` === 'present' && window.notReloaded === true`
	drop := b.d.replug(b.t)
	if !b.try(back, 20*time.Second) {
		// vpcd on a loaded machine sometimes misses a connection: once more.
		drop()
		b.d.replug(b.t)
		b.do("the page shows the YubiKey back", until(back))
	}
}

// try waits up to timeout for a JavaScript condition on the page.
func (b *tab) try(expr string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(b.ctx, timeout+5*time.Second)
	defer cancel()
	return chromedp.Do(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(timeout))) == nil
}

func screenshot(b *tab, dir, name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil || img.Bounds().Dx() < 300 {
		b.t.Fatalf("screenshot %s is no usable PNG: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), buf, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func parseCert(t *testing.T, text string) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode([]byte(text))
	if blk == nil {
		t.Fatalf("no PEM in %q", text)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
