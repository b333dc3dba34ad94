package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.step.sm/crypto/jose"
)

// stepRun is step-ca started afresh for one measurement: a process that has served
// thousands of requests is slower than a new one, and each of ours starts clean too.
type stepRun struct {
	cmd    *exec.Cmd
	url    string
	client *http.Client
}

func (s *stepCA) start(n int) (*stepRun, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfg, err := s.config(addr, filepath.Join(s.dir, fmt.Sprintf("db-%d", n)))
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(s.dir, fmt.Sprintf("step-ca-%d.log", n)))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, cfg)
	cmd.Env = append(envWithout("SOFTHSM2_CONF", "STEPPATH"), "SOFTHSM2_CONF="+s.tok.Conf, "STEPPATH="+s.dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// Keep-alive, one connection per request in flight, as a load balancer would.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.roots}, MaxIdleConns: 256, MaxIdleConnsPerHost: 256}
	r := &stepRun{cmd: cmd, url: "https://" + addr, client: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := r.client.Get(r.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("step-ca did not answer /health within 30s (log: %s): %v", logf.Name(), err)
		}
	}
}

func (r *stepRun) stop() {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-done
	}
	r.client.CloseIdleConnections()
}

// ottClaims is a one-time token for /1.0/sign, as `step ca token` makes it.
type ottClaims struct {
	jose.Claims
	SANs []string `json:"sans"`
}

// bodies makes n /1.0/sign requests ahead of time, each with its own token (step-ca
// refuses a token's jti twice) and the same CSR, so the load measures the server.
func (s *stepCA) bodies(url, csrPEM, cn string, n int) ([][]byte, error) {
	opts := new(jose.SignerOptions).WithType("JWT").WithHeader("kid", s.jwk.KeyID)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.jwk.Key}, opts)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := make([][]byte, n)
	for i := range out {
		c := ottClaims{Claims: jose.Claims{Issuer: stepCAProvisioner, Subject: cn, Audience: jose.Audience{url + "/1.0/sign"},
			ID: randomHex(16), IssuedAt: jose.NewNumericDate(now), NotBefore: jose.NewNumericDate(now),
			Expiry: jose.NewNumericDate(now.Add(5 * time.Minute))}, SANs: []string{cn}}
		tok, err := jose.Signed(signer).Claims(c).CompactSerialize()
		if err != nil {
			return nil, err
		}
		if out[i], err = json.Marshal(map[string]string{"csr": csrPEM, "ott": tok}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// signResponse is the part of step-ca's /1.0/sign answer the client checks.
type signResponse struct {
	Crt string `json:"crt"`
	CA  string `json:"ca"`
}

// sign posts one request and returns the certificate it got.
func (r *stepRun) sign(body []byte) (signResponse, error) {
	var out signResponse
	resp, err := r.client.Post(r.url+"/1.0/sign", "application/json", bytes.NewReader(body))
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return out, err
	}
	if resp.StatusCode != http.StatusCreated {
		return out, fmt.Errorf("HTTP %d: %s", resp.StatusCode, firstLine(string(data)))
	}
	return out, json.Unmarshal(data, &out)
}

// verify checks a certificate step-ca issued against the root, through the
// intermediate it sent along.
func (s *stepCA) verify(res signResponse, cn string) error {
	leaf, err := parsePEMCert(res.Crt)
	if err != nil {
		return err
	}
	inter, err := parsePEMCert(res.CA)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(inter)
	_, err = leaf.Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: pool, DNSName: cn,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

func parsePEMCert(s string) (*x509.Certificate, error) {
	blk, _ := pem.Decode([]byte(s))
	if blk == nil {
		return nil, errors.New("no PEM certificate in step-ca's answer")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// stepLoad keeps inflight requests going against one step-ca for warmup+window and
// measures the window as runLoad does for the appliance; it also returns the
// server's peak memory and whether its first certificate verified.
func (s *stepCA) stepLoad(r *stepRun, bodies [][]byte, cn string, inflight int, warmup, window time.Duration) (loadResult, procStatus, error) {
	pid := r.cmd.Process.Pid
	if _, err := r.sign(bodies[0]); err != nil { // opens the first connection
		return loadResult{}, procStatus{}, err
	}
	var next atomic.Int64
	next.Store(1)
	t1 := time.Now().Add(warmup)
	t2 := t1.Add(window)
	lanes := make([]lane, inflight)
	var wg sync.WaitGroup
	var verified sync.Once
	var verr error
	for i := range lanes {
		wg.Add(1)
		go func(l *lane) {
			defer wg.Done()
			s.runStepLane(r, bodies, &next, l, t1, t2, func(res signResponse) {
				verified.Do(func() { verr = s.verify(res, cn) })
			})
		}(&lanes[i])
	}
	time.Sleep(time.Until(t1))
	c0 := takeCPU(pid)
	peakOf := samplePeak(pid)
	time.Sleep(time.Until(t2))
	res := loadResult{InFlight: inflight, window: window}
	res.CPUSelf, res.CPUBroker, res.CPUOthers = takeCPU(pid).since(c0, window.Seconds())
	peak := peakOf()
	wg.Wait()
	summarize(&res, lanes)
	if res.Completed == 0 {
		return res, peak, fmt.Errorf("%w (first error: %s)", errNoReplies, res.FirstErr)
	}
	if verr != nil {
		return res, peak, fmt.Errorf("step-ca's certificate does not verify: %w", verr)
	}
	return res, peak, nil
}

// runStepLane is runLane over HTTPS, each request with the next prepared body.
func (s *stepCA) runStepLane(r *stepRun, bodies [][]byte, next *atomic.Int64, l *lane, t1, t2 time.Time, check func(signResponse)) {
	keepInFlight(l, t1, t2, func() error {
		i := next.Add(1) - 1
		if int(i) >= len(bodies) {
			return fmt.Errorf("ran out of prepared tokens: %w", errLaneDone)
		}
		res, err := r.sign(bodies[i])
		if err == nil {
			check(res)
		}
		return err
	})
}
