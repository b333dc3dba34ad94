package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/mqtttest"
	"github.com/iot-hsm/iot-hsm/internal/pkitest"
	"github.com/iot-hsm/iot-hsm/internal/softhsm/softhsmtest"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// tlsCA issues the broker's and the clients' certificates for the TLS broker test.
type tlsCA struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA certificate, PEM
}

func newTLSCA(t *testing.T, dir, name string) *tlsCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &tlsCA{dir: dir, cert: cert, key: key, file: filepath.Join(dir, name+".pem")}
	writePEMFile(t, ca.file, "CERTIFICATE", der)
	return ca
}

// issue writes <name>.pem and <name>.key: a server certificate for 127.0.0.1 when
// server, else a client certificate whose CN is cn.
func (ca *tlsCA) issue(t *testing.T, name, cn string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses, tmpl.DNSNames = []net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(ca.dir, name+".pem"), filepath.Join(ca.dir, name+".key")
	writePEMFile(t, certFile, "CERTIFICATE", der)
	writePEMFile(t, keyFile, "PRIVATE KEY", kder)
	return certFile, keyFile
}

func writePEMFile(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// shippedMosquittoConf returns dist/mosquitto/iot-hsm.conf as shipped, with only its
// paths, its port and its log destination adapted to the test, after checking that
// it says what the appliance's security depends on.
func shippedMosquittoConf(t *testing.T, port int, dir string, paths map[string]string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "dist", "mosquitto", "iot-hsm.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"allow_anonymous false", "require_certificate true", "use_identity_as_username true",
		"tls_version tlsv1.2", "set_tcp_nodelay true", "persistence true", "per_listener_settings false"} {
		if !strings.Contains("\n"+string(data)+"\n", "\n"+want+"\n") {
			t.Errorf("the shipped mosquitto configuration lacks %q", want)
		}
	}
	var out []string
	replaced := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			out = append(out, line)
			continue
		}
		switch {
		case f[0] == "listener":
			line = fmt.Sprintf("listener %d 127.0.0.1", port)
			replaced["listener"]++
		case paths[f[0]] != "":
			line = f[0] + " " + paths[f[0]]
			replaced[f[0]]++
		case f[0] == "allow_anonymous" || f[0] == "require_certificate" || f[0] == "use_identity_as_username":
			if len(f) != 2 {
				t.Fatalf("unexpected line %q", line)
			}
		}
		out = append(out, line)
	}
	if replaced["listener"] != 1 {
		t.Fatalf("the shipped configuration has %d listeners, want exactly one (the TLS one)", replaced["listener"])
	}
	for k := range paths {
		if replaced[k] != 1 {
			t.Fatalf("the shipped configuration has %d %s lines, want one", replaced[k], k)
		}
	}
	// What Debian's main mosquitto.conf gives a conf.d drop-in.
	out = append(out, "persistence_location "+filepath.Join(dir, "persist")+"/", "log_dest stderr", "log_type all")
	if os.Geteuid() == 0 {
		out = append(out, "user root") // the test's files are root's only
	}
	if err := os.MkdirAll(filepath.Join(dir, "persist"), 0o700); err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, "\n") + "\n"
}

// tlsClient connects a client with a clean session; it returns the Start error.
func tlsClient(t *testing.T, cfg mqtt.Config) (*mqtt.Client, error) {
	t.Helper()
	cfg.CleanSession = true
	return mqtttest.Connect(t, cfg, nil)
}

// TestBrokerTLSExample runs the shipped mosquitto example (dist/mosquitto) on
// loopback: appliances and the PKI controller authenticate with certificates, and
// the ACL confines each appliance to its own topics and its CAs' signing topics.
func TestBrokerTLSExample(t *testing.T) {
	dir := t.TempDir()
	pki := newTLSCA(t, dir, "mqtt-ca")
	serverCert, serverKey := pki.issue(t, "server", "broker.test", true)
	const devA, devB, controller = "tls-dev-a", "tls-dev-b", "pki-controller"
	aCert, aKey := pki.issue(t, "dev-a", devA, false)
	bCert, bKey := pki.issue(t, "dev-b", devB, false)
	ctlCert, ctlKey := pki.issue(t, "controller", controller, false)
	rogue := newTLSCA(t, dir, "rogue-ca")
	rogueCert, rogueKey := rogue.issue(t, "rogue-a", devA, false) // A's name, another CA

	acl, err := os.ReadFile(filepath.Join("..", "..", "dist", "mosquitto", "iot-hsm.acl"))
	if err != nil {
		t.Fatal(err)
	}
	aclFile := filepath.Join(dir, "iot-hsm.acl")
	if err := os.WriteFile(aclFile, acl, 0o600); err != nil {
		t.Fatal(err)
	}
	port := brokertest.FreePort(t)
	conf := shippedMosquittoConf(t, port, dir, map[string]string{
		"cafile": pki.file, "certfile": serverCert, "keyfile": serverKey, "acl_file": aclFile})
	mos := brokertest.StartMosquittoConfig(t, port, conf)
	url := fmt.Sprintf("ssl://127.0.0.1:%d", port)
	tlsCfg := func(cert, key string) mqtt.Config {
		return mqtt.Config{Broker: url, CAFile: pki.file, CertFile: cert, KeyFile: key, ConnectTimeout: 3 * time.Second}
	}

	// Appliance A over a SoftHSM2 token, B without HSMs; both pin the broker's CA
	// and authenticate with their certificates (CN = device id).
	applianceTLS := func(cert, key string) config.MQTT {
		return config.MQTT{Broker: url, CAFile: pki.file, CertFile: cert, KeyFile: key}
	}
	a := startAppliance(t, "", devA, softhsmtest.New(t, "tls-a"), options{mqtt: applianceTLS(aCert, aKey)})
	b := start(t, "", devB, options{mqtt: applianceTLS(bCert, bKey)})

	// The PKI controller, with its reply topics under pkiaas/replies/<its CN>/.
	ctlCfg := withID(tlsCfg(ctlCert, ctlKey), "pki-controller-1")
	ctlCfg.CleanSession = true
	op := &operator{t: t, Client: mqtttest.StartWith(t, ctlCfg, mqtttest.Options{
		ReplyTo: "pkiaas/replies/" + controller + "/" + mqtttest.RandomID(),
		Watch:   []string{protocol.StatusFilter(protocol.DefaultRoot)}})}
	ctlClient, ctlStatus := op.MQTT, op.Inbox

	t.Run("appliances serve the controller", func(t *testing.T) {
		for _, app := range []*appliance{a, b} {
			st := ok[protocol.Status](t, op.call(app, protocol.CmdStatus, struct{}{}))
			if st.Device != app.id {
				t.Fatalf("status of %s: %+v", app.id, st)
			}
		}
		ctlStatus.WaitFor(t, b.dev.Topics().Status(), `"online":true`)
	})

	var caID string
	t.Run("appliance serves its CA's signing topic", func(t *testing.T) {
		root := ok[protocol.ProvisionResult](t, op.call(a, protocol.CmdSlotProvision,
			protocol.ProvisionArgs{HSM: a.hsmID, Slot: "01", Mode: "generate", KeyType: "p256"}))
		// The PKI grants A its new CA's signing topic, as the ACL's template says,
		// and reloads the broker.
		f, err := os.OpenFile(aclFile, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "\nuser %s\ntopic read %s\n", devA, a.dev.Topics().CASign(root.CAID))
		f.Close()
		mos.Reload(t)
		rootPEM := ok[protocol.CertificateResult](t, op.call(a, protocol.CmdSlotSelfSign,
			protocol.ProvisioningCertArgs{SlotID: root.SlotID, ProvisioningCert: string(pkitest.ProvisioningCert(t, "TLS Broker Root", 0))})).Certificate
		caID = root.CAID
		id, payload := op.envelope("", protocol.SignArgs{Kind: protocol.KindCertificate, CSR: leafCSR(t, "svc.example.com"),
			Profile: &protocol.Profile{Validity: "1h"}})
		mqtttest.Publish(t, ctlClient, a.dev.Topics().CASign(caID), payload, false)
		leafPEM := ok[protocol.SignResult](t, op.wait(id, 1, time.Minute)).Certificate
		rootCert, _ := pem.Decode([]byte(rootPEM))
		leafCert, _ := pem.Decode([]byte(leafPEM))
		rc, _ := x509.ParseCertificate(rootCert.Bytes)
		lc, err := x509.ParseCertificate(leafCert.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if err := lc.CheckSignatureFrom(rc); err != nil {
			t.Fatalf("the certificate is not signed by the CA: %v", err)
		}
	})

	t.Run("client without a certificate is refused", func(t *testing.T) {
		c, err := tlsClient(t, mqtt.Config{Broker: url, ClientID: "no-cert", CAFile: pki.file})
		if err == nil || c.Connected() {
			t.Fatal("connected without a client certificate")
		}
		t.Logf("refused: %v", err)
	})
	t.Run("certificate from another CA is refused", func(t *testing.T) {
		c, err := tlsClient(t, withID(tlsCfg(rogueCert, rogueKey), "rogue"))
		if err == nil || c.Connected() {
			t.Fatal("connected with a certificate from another CA")
		}
		t.Logf("refused: %v", err)
	})
	t.Run("broker not signed by the pinned CA is refused", func(t *testing.T) {
		cfg := withID(tlsCfg(aCert, aKey), "pinned-elsewhere")
		cfg.CAFile = rogue.file
		_, err := tlsClient(t, cfg)
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Fatalf("got %v, want an unknown authority error", err)
		}
	})
	t.Run("plaintext is refused unless allowed", func(t *testing.T) {
		plain := fmt.Sprintf("tcp://127.0.0.1:%d", port)
		// The daemon's configuration: allow_plaintext defaults to false, and the
		// session refuses a tcp:// broker before dialling.
		cfg, err := config.Parse([]byte(fmt.Sprintf("[mqtt]\nbroker = %q\n", plain)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = mqtt.New(mqtt.Config{Broker: cfg.MQTT.Broker, ClientID: "plain", AllowPlaintext: cfg.MQTT.AllowPlaintext})
		if !errors.Is(err, mqtt.ErrPlaintext) {
			t.Fatalf("plaintext broker URL without allow_plaintext: %v", err)
		}
		// Allowed by the client, the broker still has no plaintext listener.
		c, err := tlsClient(t, mqtt.Config{Broker: plain, ClientID: "plain", AllowPlaintext: true})
		if err == nil || c.Connected() {
			t.Fatal("the broker accepted a plaintext session")
		}
	})

	t.Run("another appliance taking over a client id gets none of its queued commands", func(t *testing.T) {
		// A's session (persistent) with a subscription to A's commands, offline.
		sess := withID(tlsCfg(aCert, aKey), "sess-a")
		c, err := mqtttest.Connect(t, sess, map[string]mqtt.Handler{a.dev.Topics().CmdFilter(): func(string, []byte) {}})
		if err != nil {
			t.Fatal(err)
		}
		c.Close(100 * time.Millisecond)
		// Control: the broker queues for that session, and A resuming it gets it.
		mqtttest.Publish(t, ctlClient, a.dev.Topics().Cmd("zz-queued"), []byte("queued-1"), false)
		mine := &mqtttest.Inbox{}
		c, err = mqtttest.Connect(t, sess, map[string]mqtt.Handler{a.dev.Topics().CmdFilter(): mine.Handle})
		if err != nil {
			t.Fatal(err)
		}
		mine.WaitFor(t, a.dev.Topics().Cmd("zz-queued"), "queued-1")
		c.Close(100 * time.Millisecond)
		mqtttest.Publish(t, ctlClient, a.dev.Topics().Cmd("zz-queued"), []byte("queued-2"), false)
		// B's certificate resumes that session under A's client id.
		got := &mqtttest.Inbox{}
		steal := withID(tlsCfg(bCert, bKey), "sess-a")
		if _, err := mqtttest.Connect(t, steal, map[string]mqtt.Handler{"#": got.Handle}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if topics := got.Topics(); len(topics) != 0 {
			t.Fatalf("B got A's queued messages on %v", topics)
		}
	})

	t.Run("appliance confined to its own topics", func(t *testing.T) {
		// A's certificate on a second connection, claiming B's username (the
		// broker takes the username from the certificate).
		pcfg := withID(tlsCfg(aCert, aKey), "probe-a")
		pcfg.Username = devB
		probe, err := tlsClient(t, pcfg)
		if err != nil {
			t.Fatal(err)
		}
		// B's certificate, joining the share group of A's CA and reading its topic.
		bprobe, err := tlsClient(t, withID(tlsCfg(bCert, bKey), "probe-b"))
		if err != nil {
			t.Fatal(err)
		}
		bseen := &mqtttest.Inbox{}
		for _, f := range []string{b.dev.Topics().CASignShared(caID), b.dev.Topics().CASign(caID)} {
			if err := bprobe.Subscribe(f, bseen.Handle); err != nil {
				t.Logf("B's subscription to %s refused: %v", f, err)
			}
		}

		if !regexp.MustCompile(`as probe-a \([^)]*u'` + devA + `'\)`).MatchString(mos.Log()) {
			t.Fatal("the broker did not take the probe's username from its certificate")
		}
		seen := &mqtttest.Inbox{}
		subscribed := map[string]error{}
		for _, f := range []string{b.dev.Topics().CmdFilter(), "iot-hsm/" + devB + "/cmd/#", b.dev.Topics().Status(),
			b.dev.Topics().Reply(), op.ReplyTo, "#"} {
			subscribed[f] = probe.Subscribe(f, seen.Handle)
		}
		t.Logf("subscriptions outside A's topics: %v", subscribed)
		own := a.dev.Topics().Cmd("zz-marker")
		if err := probe.Subscribe(a.dev.Topics().CmdFilter(), seen.Handle); err != nil {
			t.Fatalf("A cannot subscribe to its own commands: %v", err)
		}

		// A forges B's status (retained), sends B a command and signs through its
		// own CA topic as if it were the PKI: none of it may arrive.
		mqtttest.Publish(t, probe, b.dev.Topics().Status(), []byte(`{"device":"tls-dev-b","online":false,"forged":true}`), true)
		forgedID, forged := op.envelope("", struct{}{})
		mqtttest.Publish(t, probe, b.dev.Topics().Cmd(protocol.CmdStatus), forged, false)
		signID, signReq := op.envelope("", protocol.SignArgs{Kind: protocol.KindCertificate, CSR: leafCSR(t, "evil.example.com"),
			Profile: &protocol.Profile{Validity: "1h"}})
		mqtttest.Publish(t, probe, a.dev.Topics().CASign(caID), signReq, false)
		// What A may do, as a marker after the forgeries: its own status.
		mqtttest.Publish(t, probe, a.dev.Topics().Status(), []byte(`{"marker":"after-forgery"}`), false)
		ctlStatus.WaitFor(t, a.dev.Topics().Status(), "after-forgery")

		// The controller's own command to B after that: answered, and so
		// everything B got before it has been answered too.
		ok[protocol.Status](t, op.call(b, protocol.CmdStatus, struct{}{}))
		// Signing requests on A's CA topic while B sits in its share group: B
		// reads none of them. mosquitto's acl_file checks read access when it
		// delivers, not when a client subscribes, so the requests the share group
		// hands to B are dropped (dist/mosquitto/README.md, "Limits").
		csr := leafCSR(t, "ok.example.com")
		signReqs := func(n int) []string {
			var ids []string
			for i := 0; i < n; i++ {
				id, req := op.envelope("", protocol.SignArgs{Kind: protocol.KindCertificate, CSR: csr, Profile: &protocol.Profile{Validity: "1h"}})
				mqtttest.Publish(t, ctlClient, a.dev.Topics().CASign(caID), req, false)
				ids = append(ids, id)
			}
			return ids
		}
		during := signReqs(6)
		// A marker on A's own command topic, after all of that.
		mqtttest.Publish(t, ctlClient, own, []byte("marker"), false)
		seen.WaitFor(t, own, "marker")
		time.Sleep(300 * time.Millisecond)
		// B gone, every request is answered, by A.
		bprobe.Close(100 * time.Millisecond)
		for _, id := range signReqs(4) {
			res := ok[protocol.SignResult](t, op.wait(id, 1, 30*time.Second))
			if !strings.HasPrefix(res.SlotID, a.hsmID+"/") {
				t.Fatalf("signed by %s", res.SlotID)
			}
		}
		answered := 0
		for _, id := range during {
			if op.count(id) > 0 {
				answered++
			}
		}
		t.Logf("%d of %d signing requests answered while B sat in the share group of A's CA", answered, len(during))

		if ctlStatus.Has(b.dev.Topics().Status(), "forged") {
			t.Fatal("A's forged status of B reached the controller")
		}
		if n := op.count(forgedID); n != 0 {
			t.Fatalf("B executed a command A sent it (%d replies)", n)
		}
		if n := op.count(signID); n != 0 {
			t.Fatal("A had its CA sign a request A published itself")
		}
		for _, topic := range seen.Topics() {
			// Its own commands, and the signing requests of its own CA.
			if topic != own && topic != a.dev.Topics().CASign(caID) {
				t.Fatalf("A received a message on %s", topic)
			}
		}
		if got := bseen.Topics(); len(got) != 0 {
			t.Fatalf("B received the signing requests of a CA it does not hold: %v", got)
		}
		// A late subscriber sees B's genuine retained status, not the forgery.
		late := &mqtttest.Inbox{}
		if err := ctlClient.Subscribe(b.dev.Topics().Status(), late.Handle); err != nil {
			t.Fatal(err)
		}
		late.WaitFor(t, b.dev.Topics().Status(), `"online":true`)
		if late.Has(b.dev.Topics().Status(), "forged") {
			t.Fatal("the retained status of B is A's forgery")
		}
		var st protocol.Status
		if err := json.Unmarshal(late.Last(b.dev.Topics().Status()), &st); err != nil || st.Device != devB {
			t.Fatalf("B's retained status: %v %+v", err, st)
		}
	})
}

func withID(c mqtt.Config, id string) mqtt.Config {
	c.ClientID = id
	return c
}
