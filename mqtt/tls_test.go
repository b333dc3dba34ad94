package mqtt

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
)

func TestTLS(t *testing.T) {
	pki := newTestPKI(t)
	m := brokertest.StartMosquitto(t,
		"cafile "+pki.caFile,
		"certfile "+pki.serverCert,
		"keyfile "+pki.serverKey,
		"require_certificate true",
	)
	url := fmt.Sprintf("ssl://127.0.0.1:%d", m.Port)

	connect := func(t *testing.T, cfg Config) (*Client, error) {
		cfg.Broker, cfg.ClientID, cfg.ConnectTimeout, cfg.Logger = url, t.Name(), 3*time.Second, testLogger(t)
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(100 * time.Millisecond) })
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		return c, c.Start(ctx)
	}

	t.Run("pinned CA and client certificate", func(t *testing.T) {
		c, err := connect(t, Config{CAFile: pki.caFile, CertFile: pki.clientCert, KeyFile: pki.clientKey})
		if err != nil {
			t.Fatal(err)
		}
		in := newInbox()
		if err := c.Subscribe("tls/t", in.handle); err != nil {
			t.Fatal(err)
		}
		publish(t, c, "tls/t", "secure", false)
		in.expect(t, "tls/t", "secure")
	})
	t.Run("broker certificate from another CA", func(t *testing.T) {
		_, err := connect(t, Config{CAFile: pki.otherCAFile, CertFile: pki.clientCert, KeyFile: pki.clientKey})
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Fatalf("got %v, want an x509 unknown authority error", err)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		c, err := connect(t, Config{CAFile: pki.caFile})
		if err == nil || c.Connected() {
			t.Fatalf("connected without a client certificate (err %v)", err)
		}
		t.Logf("refused as it should be: %v", err)
	})
}
