//go:build !nocloudkms

package appliance

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/hsm/cloudkms"
)

// cloudkmsProviders builds the Cloud KMS backend from the [[cloudkms]] blocks: one
// client per set of credentials and endpoint, serving the key rings configured with
// them. A binary built with the tag nocloudkms leaves the backend (and gRPC, and
// Google's client libraries) out; see backends_nocloudkms.go.
func cloudkmsProviders(cfg *config.Config) ([]hsm.Provider, error) {
	type conn struct {
		credentials, endpoint string
		insecure              bool
		callTimeout, probe    time.Duration
	}
	var order []conn
	rings := map[conn][]cloudkms.KeyRing{}
	for _, k := range cfg.CloudKMS {
		c := conn{k.CredentialsFile, k.Endpoint, k.Insecure, k.CallTimeout, k.ProbeInterval}
		if _, ok := rings[c]; !ok {
			order = append(order, c)
		}
		rings[c] = append(rings[c], cloudkms.KeyRing{Name: k.KeyRing, ID: k.ShortID()})
	}
	var out []hsm.Provider
	fail := func(err error) ([]hsm.Provider, error) {
		for _, p := range out {
			p.Close()
		}
		return nil, err
	}
	for _, c := range order {
		var opts []option.ClientOption
		if c.endpoint != "" {
			opts = append(opts, option.WithEndpoint(c.endpoint))
		}
		switch {
		case c.insecure:
			// Plaintext to a loopback test server only: config.Parse refuses
			// anything else.
			opts = append(opts, option.WithoutAuthentication(),
				option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
		case c.credentials != "":
			if _, err := os.Stat(c.credentials); err != nil {
				return fail(fmt.Errorf("%w: cloudkms credentials_file: %v", config.ErrInvalid, err))
			}
			opts = append(opts, option.WithAuthCredentialsFile(option.ServiceAccount, c.credentials))
		}
		// Background, not a deadline: the client keeps this context for refreshing
		// its access tokens for as long as it lives.
		p, err := cloudkms.New(context.Background(), kmsOptions(rings[c], opts, c.callTimeout, c.probe))
		if err != nil {
			return fail(err)
		}
		out = append(out, p)
	}
	return out, nil
}

// kmsOptions are the backend's options for one connection. A shorter call timeout
// (a private endpoint on the same network) shortens the backoff between attempts and
// the presence check with it.
func kmsOptions(rings []cloudkms.KeyRing, opts []option.ClientOption, callTimeout, probe time.Duration) cloudkms.Options {
	o := cloudkms.Options{KeyRings: rings, ClientOptions: opts, CallTimeout: callTimeout, ProbeInterval: probe}
	if callTimeout > 0 {
		o.Backoff = min(250*time.Millisecond, callTimeout/40)
		o.ProbeTimeout = min(5*time.Second, callTimeout/2)
	}
	return o
}
