package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// peerResult is the original IoT-HSM's way of issuing: one openssl process per
// certificate, the CA key reached through the PKCS#11 engine on the same token.
type peerResult struct {
	Rate1   float64 `json:"per_second_one_at_a_time"`
	PerCert float64 `json:"ms_per_certificate"`
	N1      int     `json:"certificates_one_at_a_time"`
	Rate2   float64 `json:"per_second_two_at_a_time"`
	N2      int     `json:"certificates_two_at_a_time"`
	Failed1 int     `json:"failed_runs_one_at_a_time"`
	Failed2 int     `json:"failed_runs_two_at_a_time"`
	// FirstFailure is the first failed run's message, shortened.
	FirstFailure string `json:"first_failure,omitempty"`
	Engine       string `json:"engine"`
	Command      string `json:"command"`
	Verified     bool   `json:"first_certificate_verified"`
}

type peerSetup struct {
	dir      string
	tokConf  string // SOFTHSM2_CONF of the token
	module   string // the token's copy of libsofthsm2.so
	serial   string
	keyID    string // CKA_ID in hex
	pin      string
	caPEM    string
	csrPEM   string
	duration time.Duration
}

var enginesDir = regexp.MustCompile(`ENGINESDIR:\s*"([^"]+)"`)

func opensslPeer(s peerSetup) (peerResult, error) {
	var res peerResult
	out, err := exec.Command("openssl", "version", "-e").CombinedOutput()
	if err != nil {
		return res, fmt.Errorf("openssl version -e: %v: %s", err, out)
	}
	m := enginesDir.FindStringSubmatch(string(out))
	if m == nil {
		return res, fmt.Errorf("openssl does not say where its engines are: %s", out)
	}
	res.Engine = filepath.Join(m[1], "pkcs11.so")
	if _, err := os.Stat(res.Engine); err != nil {
		return res, fmt.Errorf("the PKCS#11 engine is missing (apt-get install libengine-pkcs11-openssl, done by make bench): %w", err)
	}
	// The engine loads the module named here, not p11-kit's default: the same
	// SoftHSM2 copy and token as the appliance's.
	conf := strings.Join([]string{
		"openssl_conf = openssl_init",
		"[openssl_init]",
		"engines = engine_section",
		"[engine_section]",
		"pkcs11 = pkcs11_section",
		"[pkcs11_section]",
		"engine_id = pkcs11",
		"dynamic_path = " + res.Engine,
		"MODULE_PATH = " + s.module,
		"init = 0",
	}, "\n") + "\n"
	confPath := filepath.Join(s.dir, "openssl-engine.cnf")
	files := map[string]string{confPath: conf, filepath.Join(s.dir, "ca.pem"): s.caPEM, filepath.Join(s.dir, "leaf.csr"): s.csrPEM}
	for p, data := range files {
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			return res, err
		}
	}
	var pct strings.Builder
	for i := 0; i+1 < len(s.keyID); i += 2 {
		pct.WriteString("%" + s.keyID[i:i+2])
	}
	uri := fmt.Sprintf("pkcs11:serial=%s;id=%s;type=private?pin-value=%s", s.serial, pct.String(), s.pin)
	env := append(os.Environ(), "OPENSSL_CONF="+confPath, "SOFTHSM2_CONF="+s.tokConf)
	issue := func(out string) error {
		cmd := exec.Command("openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem",
			"-engine", "pkcs11", "-CAkeyform", "engine", "-CAkey", uri, "-days", "30", "-out", out)
		cmd.Dir, cmd.Env = s.dir, env
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("openssl x509 -req: %v: %s", err, b)
		}
		return nil
	}
	res.Command = "openssl x509 -req -in leaf.csr -CA ca.pem -engine pkcs11 -CAkeyform engine -CAkey 'pkcs11:serial=…;id=…;type=private?pin-value=…' -days 30"

	// The first certificate must verify against the CA certificate: proof that the
	// engine really signed with the token's key.
	if err := issue("first.pem"); err != nil {
		return res, err
	}
	v := exec.Command("openssl", "verify", "-CAfile", "ca.pem", "first.pem")
	v.Dir = s.dir
	if b, err := v.CombinedOutput(); err != nil {
		return res, fmt.Errorf("the openssl-issued certificate does not verify: %v: %s", err, b)
	}
	res.Verified = true

	// SoftHSM2 is not built for several processes on one token at once: with two
	// openssl processes some runs fail (segfault, "Failed to enumerate slots").
	// Failed runs are counted and not retried; only certificates count.
	n, failed, el, err := issueMany(1, s.duration, issue)
	if n == 0 {
		return res, err
	}
	res.N1, res.Failed1, res.Rate1, res.PerCert = n, failed, float64(n)/el.Seconds(), el.Seconds()*1000/float64(n)
	n, failed, el, err = issueMany(2, s.duration, issue)
	res.N2, res.Failed2, res.Rate2 = n, failed, float64(n)/el.Seconds()
	if err != nil {
		res.FirstFailure = firstLine(err.Error())
	}
	return res, nil
}

func firstLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// issueMany runs issue in workers goroutines for d and counts the certificates and
// the failed runs.
func issueMany(workers int, d time.Duration, issue func(out string) error) (n, failed int, el time.Duration, firstErr error) {
	var mu sync.Mutex
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(end); i++ {
				err := issue(fmt.Sprintf("leaf-%d-%d.pem", w, i))
				mu.Lock()
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					n++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return n, failed, time.Since(start), firstErr
}
