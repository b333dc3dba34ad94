package mqtt

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
)

// testBroker is a broker a test can crash and bring back on the same address.
type testBroker interface {
	URL() string
	Stop()
	Start()
}

type mosquittoBroker struct {
	t testing.TB
	m *brokertest.Mosquitto
}

func (b *mosquittoBroker) URL() string { return b.m.URL }
func (b *mosquittoBroker) Stop()       { b.m.Stop() }
func (b *mosquittoBroker) Start()      { b.m.Start(b.t) }

type embeddedBroker struct {
	t    testing.TB
	addr string
	mu   sync.Mutex
	b    *Broker
}

func startEmbedded(t testing.TB) *embeddedBroker {
	b, err := StartBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &embeddedBroker{t: t, addr: b.Addr(), b: b}
	t.Cleanup(e.Stop)
	return e
}

func (e *embeddedBroker) URL() string { return "tcp://" + e.addr }

func (e *embeddedBroker) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.b != nil {
		e.b.Close()
		e.b = nil
	}
}

func (e *embeddedBroker) Start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	b, err := StartBroker(e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.b = b
}

var brokerKinds = []struct {
	name  string
	start func(testing.TB) testBroker
}{
	{"mosquitto", func(t testing.TB) testBroker { return &mosquittoBroker{t, brokertest.StartMosquitto(t)} }},
	{"embedded", func(t testing.TB) testBroker { return startEmbedded(t) }},
}

// forEachBroker runs f against a fresh broker of each kind.
func forEachBroker(t *testing.T, f func(t *testing.T, b testBroker)) {
	for _, k := range brokerKinds {
		t.Run(k.name, func(t *testing.T) { f(t, k.start(t)) })
	}
}

// testLogger sends the client's log to the test's log, and nowhere once the test
// is over.
func testLogger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.t = nil
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu sync.Mutex
	t  testing.TB
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.t != nil {
		w.t.Log(string(p[:len(p)-1]))
	}
	return len(p), nil
}

// newClient makes a plaintext client closed at the end of the test.
func newClient(t testing.TB, url, id string, adjust ...func(*Config)) *Client {
	t.Helper()
	cfg := Config{Broker: url, ClientID: id, AllowPlaintext: true, ConnectTimeout: 3 * time.Second, Logger: testLogger(t)}
	for _, f := range adjust {
		f(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(100 * time.Millisecond) })
	return c
}

func start(t testing.TB, c *Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

func publish(t testing.TB, c *Client, topic, payload string, retained bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := c.Publish(ctx, topic, []byte(payload), retained); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

type received struct{ topic, payload string }

// inbox collects a handler's messages without ever blocking it.
type inbox struct {
	ch chan received
}

func newInbox() *inbox { return &inbox{ch: make(chan received, 1024)} }

func (in *inbox) handle(topic string, payload []byte) {
	select {
	case in.ch <- received{topic, string(payload)}:
	default:
		panic("inbox full")
	}
}

func (in *inbox) next(t testing.TB) received {
	t.Helper()
	select {
	case m := <-in.ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
		return received{}
	}
}

// expect waits for payload on topic, skipping anything else (such as a retained
// message from an earlier step).
func (in *inbox) expect(t testing.TB, topic, payload string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-in.ch:
			if m.topic == topic && m.payload == payload {
				return
			}
		case <-deadline:
			t.Fatalf("no %q on %s within 5s", payload, topic)
		}
	}
}

// eventually polls cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// proxy forwards TCP connections to a broker and can cut them the way a network
// failure or a crashed client would: without an MQTT DISCONNECT.
type proxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	conns    []net.Conn
	frozen   chan struct{} // non-nil while forwarding is suspended
	cut      bool
	refusing bool // new connections are closed at once
	wg       sync.WaitGroup
}

func newProxy(t testing.TB, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.Cut)
	return p
}

func (p *proxy) URL() string { return "tcp://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			in.Close()
			out.Close()
			return
		}
		if p.refusing {
			p.mu.Unlock()
			in.Close()
			out.Close()
			continue
		}
		p.conns = append(p.conns, in, out)
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(out, in)
		go p.pipe(in, out)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate := p.frozen
			p.mu.Unlock()
			if gate != nil {
				<-gate
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// Freeze stops forwarding in both directions while keeping the sockets open: the
// broker becomes unreachable without either side noticing.
func (p *proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen == nil {
		p.frozen = make(chan struct{})
	}
}

// Drop closes the current connections and, while refuse holds, every new one.
func (p *proxy) Drop(refuse bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refusing = refuse
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Cut closes every connection and stops accepting new ones.
func (p *proxy) Cut() {
	p.mu.Lock()
	if !p.cut {
		p.cut = true
		p.ln.Close()
		for _, c := range p.conns {
			c.Close()
		}
		if p.frozen != nil {
			close(p.frozen)
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// testPKI is a CA with a server and a client certificate, plus an unrelated CA.
type testPKI struct {
	caFile, otherCAFile   string
	serverCert, serverKey string
	clientCert, clientKey string
	server, otherCA       *x509.Certificate
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	p := &testPKI{}
	var serial int64
	issue := func(name string, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.Subject = pkix.Name{CommonName: name}
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(time.Hour)
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		certFile := filepath.Join(dir, name+".pem")
		keyFile := filepath.Join(dir, name+".key")
		if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
			t.Fatal(err)
		}
		return cert, key, certFile, keyFile
	}
	caTmpl := func() *x509.Certificate {
		return &x509.Certificate{IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	}
	ca, caKey, caFile, _ := issue("ca", caTmpl(), nil, nil)
	p.caFile = caFile
	p.otherCA, _, p.otherCAFile, _ = issue("other-ca", caTmpl(), nil, nil)
	p.server, _, p.serverCert, p.serverKey = issue("server", &x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost"},
	}, ca, caKey)
	_, _, p.clientCert, p.clientKey = issue("client", &x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	return p
}
