package console

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// maxConnectTimeout bounds the connection attempt on its own: a broker that does not
// answer within it is not going to, whatever --timeout says about the device.
const maxConnectTimeout = 10 * time.Second

// conn is the console's broker connection.
type conn struct {
	client     *mqtt.Client
	clientID   string
	replyTopic string
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return hex.EncodeToString(b)
}

// connect opens the broker connection.
func (s *session) connect() (*conn, error) {
	plaintext, loopback, err := brokerKind(s.opts.broker)
	if err != nil {
		return nil, usagef("--broker: %v", err)
	}
	if plaintext && !loopback && !s.opts.allowPlaintext {
		// Credentials and requests would cross the network readable by anyone on
		// the path; on loopback they never leave the machine.
		return nil, usagef("--broker %s is plaintext and not on this machine; use ssl:// or --allow-plaintext", s.opts.broker)
	}
	var password string
	if s.opts.passwordFile != "" {
		if password, err = s.readSecret("password-file", s.opts.passwordFile); err != nil {
			return nil, err
		}
	}
	id := "iot-hsm-console-" + randomHex(8)
	c, err := mqtt.New(mqtt.Config{
		Broker:         s.opts.broker,
		ClientID:       id,
		Username:       s.opts.username,
		Password:       password,
		CAFile:         s.opts.caFile,
		CertFile:       s.opts.certFile,
		KeyFile:        s.opts.keyFile,
		AllowPlaintext: plaintext,
		ConnectTimeout: min(s.opts.timeout, maxConnectTimeout),
		// A kept session would outlive this run under a client id nobody uses
		// again, holding its reply subscription on the broker.
		CleanSession: true,
		// The transport's connection log would interleave with the command's
		// output; its failures reach the operator through the errors returned here.
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, usagef("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(s.opts.timeout, maxConnectTimeout))
	defer cancel()
	if err := c.Start(ctx); err != nil {
		c.Close(0)
		return nil, unreachablef("broker unreachable: %v", err)
	}
	return &conn{
		client:     c,
		clientID:   id,
		replyTopic: s.opts.root + "/console/" + id + "/reply",
	}, nil
}

func (cn *conn) close() { cn.client.Close(250 * time.Millisecond) }

// brokerKind tells whether the broker URL is plaintext and whether it names this
// machine. Other problems with the URL are left to the transport.
func brokerKind(broker string) (plaintext, loopback bool, err error) {
	if err := mqtt.CheckBroker(broker); err != nil {
		return false, false, err
	}
	u, err := url.Parse(broker)
	if err != nil {
		return false, false, err
	}
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
		plaintext = true
	case "ssl", "tls", "mqtts":
	default:
		return false, false, fmt.Errorf("scheme of %q must be tcp, mqtt, ssl, tls or mqtts", broker)
	}
	host := u.Hostname()
	if host == "localhost" {
		return plaintext, true, nil
	}
	ip := net.ParseIP(host)
	return plaintext, ip != nil && ip.IsLoopback(), nil
}

// request sends one protocol request and waits for its reply. topic is the device's
// command topic unless the caller gives another (the CA signing topic).
func (s *session) request(cmd, topic string, rf *requestFlags, args any) (reply *protocol.Reply, raw []byte, err error) {
	id := rf.id
	if id == "" {
		id = randomHex(8)
	} else if !protocol.ValidID(id) {
		return nil, nil, usagef("--id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
	}
	cn, err := s.connect()
	if err != nil {
		return nil, nil, err
	}
	defer cn.close()
	if args, topic, err = s.resolveTarget(cn, cmd, topic, args); err != nil {
		return nil, nil, err
	}
	rawArgs := json.RawMessage("{}")
	if args != nil {
		if rawArgs, err = json.Marshal(args); err != nil {
			return nil, nil, fmt.Errorf("encode args: %w", err)
		}
	}

	replies := make(chan []byte, 1)
	err = cn.client.Subscribe(cn.replyTopic, func(_ string, payload []byte) {
		var r struct {
			ID string `json:"id"`
		}
		// A reply to another id is a leftover of someone else's request (or a
		// replay); it must not be taken for ours.
		if json.Unmarshal(payload, &r) != nil || r.ID != id {
			return
		}
		select {
		case replies <- payload:
		default: // the first one counts; a duplicate delivery is dropped
		}
	})
	if err != nil {
		return nil, nil, unreachablef("subscribe to %s: %v", cn.replyTopic, err)
	}

	// The device drops the request once we have stopped waiting for it, so that a
	// request stuck in a broker queue is not executed behind the operator's back.
	expires := time.Now().Add(s.opts.timeout).UTC()
	payload, err := json.Marshal(protocol.Request{ID: id, ReplyTo: cn.replyTopic, ExpiresAt: &expires, Args: rawArgs})
	if err != nil {
		return nil, nil, fmt.Errorf("encode request: %w", err)
	}
	if len(payload) > protocol.MaxPayload {
		return nil, nil, usagef("the request is %d bytes; the device accepts at most %d", len(payload), protocol.MaxPayload)
	}
	if payload, err = s.signRequest(payload, topic); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithDeadline(context.Background(), expires)
	defer cancel()
	if err := cn.client.Publish(ctx, topic, payload, false); err != nil {
		return nil, nil, unreachablef("publish to %s: %v", topic, err)
	}

	select {
	case raw = <-replies:
	case <-ctx.Done():
		return nil, nil, unreachablef("no reply within %s (request %s on %s)", s.opts.timeout, id, topic)
	}
	reply = &protocol.Reply{}
	if err := json.Unmarshal(raw, reply); err != nil {
		return nil, raw, fmt.Errorf("reply %s is not a reply envelope: %v", id, err)
	}
	return reply, raw, nil
}

// call runs a protocol command: it sends the request, prints the envelope with
// --json, reports an error reply and returns the reply of a successful one.
func (s *session) call(cmd, topic string, rf *requestFlags, args any) (*protocol.Reply, error) {
	reply, raw, err := s.request(cmd, topic, rf, args)
	if err != nil {
		return nil, err
	}
	if s.opts.json {
		printIndented(s.stdout, raw)
	}
	if reply.Replayed {
		fmt.Fprintf(s.stderr, "note: replayed: the device already answered request %s; this is its stored reply\n", reply.ID)
	}
	if !reply.OK {
		printReplyError(s.stderr, reply.Error)
		return nil, errReported
	}
	return reply, nil
}

// result decodes a successful reply's result.
func result(reply *protocol.Reply, v any) error {
	if err := json.Unmarshal(reply.Result, v); err != nil {
		return fmt.Errorf("reply %s: result: %v", reply.ID, err)
	}
	return nil
}

func printIndented(w io.Writer, raw []byte) {
	var buf bytes.Buffer
	if json.Indent(&buf, raw, "", "  ") != nil {
		buf.Reset()
		buf.Write(raw)
	}
	buf.WriteByte('\n')
	w.Write(buf.Bytes())
}

func printReplyError(w io.Writer, e *protocol.Error) {
	if e == nil {
		fmt.Fprintln(w, "error: the device answered ok:false without an error")
		return
	}
	fmt.Fprintf(w, "error: %s: %s\n", e.Code, e.Message)
	if r, ok := e.Details["retries"]; ok {
		fmt.Fprintf(w, "retries left: %v\n", r)
	}
}

// inputLimit is more than any request can carry, so a file that reaches it is
// refused without being read whole.
const inputLimit = 2 * protocol.MaxPayload

// readInput reads a FILE argument; "-" is stdin.
func (s *session) readInput(flagName, path string) ([]byte, error) {
	var r io.Reader
	if path == "-" {
		if s.stdinUsed != "" {
			return nil, usagef("--%s and --%s cannot both read stdin", s.stdinUsed, flagName)
		}
		s.stdinUsed = flagName
		r = s.stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, usagef("--%s: %v", flagName, err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, inputLimit+1))
	if err != nil {
		return nil, usagef("--%s: %v", flagName, err)
	}
	if len(data) > inputLimit {
		return nil, usagef("--%s: more than %d bytes; a request carries at most %d", flagName, inputLimit, protocol.MaxPayload)
	}
	return data, nil
}

// readSecret reads a PIN, key or password from a file or stdin, without the line
// end an editor or echo adds. Its content never appears in a message.
func (s *session) readSecret(flagName, path string) (string, error) {
	data, err := s.readInput(flagName, path)
	if err != nil {
		return "", err
	}
	secret := strings.TrimRight(string(data), "\r\n")
	if secret == "" {
		return "", usagef("--%s: empty", flagName)
	}
	return secret, nil
}

// readPEM reads a FILE argument that must hold PEM, so that a DER file or a wrong
// path is caught before the device is asked.
func (s *session) readPEM(flagName, path string) (string, error) {
	data, err := s.readInput(flagName, path)
	if err != nil {
		return "", err
	}
	if !bytes.Contains(data, []byte("-----BEGIN ")) {
		return "", usagef("--%s: %s holds no PEM block", flagName, displayName(path))
	}
	if want := pemTypes[flagName]; want != nil {
		if err := checkBlocks(displayName(path), data, want); err != nil {
			return "", usagef("--%s: %v", flagName, err)
		}
	}
	return string(data), nil
}

// pemTypes are the PEM blocks each flag that reads one takes.
var pemTypes = map[string][]string{
	"provisioning-cert": {"CERTIFICATE"},
	"certificate":       {"CERTIFICATE"},
	"chain":             {"CERTIFICATE"},
	"csr":               {"CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"},
}

// checkBlocks refuses, before anything is sent, a file whose blocks are not what the
// flag takes: above all a private key given by mistake, which must not cross the
// broker only to be refused by the device.
func checkBlocks(name string, data []byte, want []string) error {
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return nil
		}
		if slices.Contains(want, b.Type) {
			continue
		}
		if strings.Contains(b.Type, "PRIVATE KEY") {
			return fmt.Errorf("%s holds a private key (%s), not a %s: nothing was sent; "+
				"the key stays on this machine", name, b.Type, want[0])
		}
		return fmt.Errorf("%s holds a %s block; want %s", name, b.Type, want[0])
	}
}

func displayName(path string) string {
	if path == "-" {
		return "stdin"
	}
	return path
}
