// Package cloudkms is the Google Cloud KMS backend, on cloud.google.com/go/kms/apiv1
// over gRPC. Every configured key ring is an HSM with id cloudkms-<id>; its CryptoKeys
// of purpose ASYMMETRIC_SIGN and their enabled versions are its slots, named
// <key>/<version>. Keys are generated inside Cloud KMS (protection level HSM) and
// never leave it: signatures come from AsymmetricSign, under Google's end-to-end
// integrity checks (CRC32C of the digest, of the signature and of the public key).
package cloudkms

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// KeyRing is one configured key ring.
type KeyRing struct {
	// Name is the resource name, projects/<p>/locations/<l>/keyRings/<r>.
	Name string
	// ID makes the HSM id cloudkms-<ID>: lowercase letters, digits and '-'. It must
	// stay the same across restarts, since slot ids (and so the slot state) hang on it.
	ID string
}

// Options configure the backend. Zero durations and counts take the defaults.
type Options struct {
	KeyRings []KeyRing
	// ClientOptions choose the credentials and the endpoint (option.WithAuthCredentialsFile,
	// option.WithEndpoint, ...). None means Application Default Credentials against
	// cloudkms.googleapis.com.
	ClientOptions []option.ClientOption

	// CallTimeout bounds one attempt of one API call (default 10 s).
	CallTimeout time.Duration
	// Attempts is how many times a call that failed in transit (UNAVAILABLE,
	// DEADLINE_EXCEEDED, or a reply failing its integrity checks) is tried in all
	// before the key ring is reported offline (default 3).
	Attempts int
	// Backoff is the first pause between attempts; it doubles, up to 2 s (default 250 ms).
	Backoff time.Duration
	// SignTimeout bounds one signature, retries included (default 30 s): a
	// crypto.Signer carries no context of its own.
	SignTimeout time.Duration
	// ProbeInterval is how often a reachable key ring is checked by a scan (default
	// 10 s; any successful call counts as a check). An unreachable one is checked at
	// every scan, so its return is seen at once.
	ProbeInterval time.Duration
	// ProbeTimeout bounds a presence check (default 5 s).
	ProbeTimeout time.Duration
	// GenerateTimeout bounds the wait for a new key version to leave
	// PENDING_GENERATION (default 2 min).
	GenerateTimeout time.Duration
}

func (o *Options) defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&o.CallTimeout, 10*time.Second)
	set(&o.Backoff, 250*time.Millisecond)
	set(&o.SignTimeout, 30*time.Second)
	set(&o.ProbeInterval, 10*time.Second)
	set(&o.ProbeTimeout, 5*time.Second)
	set(&o.GenerateTimeout, 2*time.Minute)
	if o.Attempts <= 0 {
		o.Attempts = 3
	}
}

var (
	keyRingName = regexp.MustCompile(`^projects/[^/]+/locations/([^/]+)/keyRings/[a-zA-Z0-9_-]{1,63}$`)
	shortID     = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
)

// Provider is one Cloud KMS client (one set of credentials, one endpoint) and the key
// rings it serves.
type Provider struct {
	opts   Options
	client *kms.KeyManagementClient
	tokens []*Token
	once   sync.Once
}

// New makes the client. It dials lazily: a KMS that is unreachable now makes the key
// rings absent, not New fail. Credentials are looked up here (a missing
// service-account file or no Application Default Credentials is an error).
func New(ctx context.Context, opts Options) (*Provider, error) {
	opts.defaults()
	if len(opts.KeyRings) == 0 {
		return nil, fmt.Errorf("%w: cloudkms: no key ring configured", hsm.ErrInvalidConfig)
	}
	p := &Provider{opts: opts}
	ids, names := map[string]bool{}, map[string]bool{}
	for _, kr := range opts.KeyRings {
		m := keyRingName.FindStringSubmatch(kr.Name)
		switch {
		case m == nil:
			return nil, fmt.Errorf("%w: cloudkms: %q is not a key ring name (projects/<p>/locations/<l>/keyRings/<r>)", hsm.ErrInvalidConfig, kr.Name)
		case !shortID.MatchString(kr.ID):
			return nil, fmt.Errorf("%w: cloudkms: id %q of %s (want lowercase letters, digits and -)", hsm.ErrInvalidConfig, kr.ID, kr.Name)
		case ids[kr.ID] || names[kr.Name]:
			return nil, fmt.Errorf("%w: cloudkms: key ring %s (id %s) configured twice", hsm.ErrInvalidConfig, kr.Name, kr.ID)
		}
		ids[kr.ID], names[kr.Name] = true, true
		p.tokens = append(p.tokens, &Token{p: p, name: kr.Name, id: "cloudkms-" + kr.ID, location: m[1], pubs: map[string]*versionKey{}})
	}
	copts := []option.ClientOption{
		option.WithTelemetryDisabled(),
		// gRPC's reconnect backoff grows to 2 minutes by default; after a KMS or
		// network outage the key rings must come back within seconds.
		option.WithGRPCDialOption(grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})),
	}
	c, err := kms.NewKeyManagementClient(ctx, append(copts, opts.ClientOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("%w: cloudkms: %v", hsm.ErrInvalidConfig, err)
	}
	// The library's own retries (up to 60 s per call, per method) are replaced by
	// ours: bounded, with one deadline per attempt, and ending in hsm.ErrOffline.
	c.CallOptions = &kms.KeyManagementCallOptions{}
	p.client = c
	return p, nil
}

// Tokens checks the key rings whose check is due, concurrently, and returns all of
// them: an unreachable key ring stays listed, absent, so its slots keep their state.
func (p *Provider) Tokens(ctx context.Context) ([]hsm.Token, error) {
	var wg sync.WaitGroup
	for _, t := range p.tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.check(ctx)
		}()
	}
	wg.Wait()
	out := make([]hsm.Token, len(p.tokens))
	for i, t := range p.tokens {
		out[i] = t
	}
	return out, nil
}

// Close closes the client's connections.
func (p *Provider) Close() error {
	var err error
	p.once.Do(func() { err = p.client.Close() })
	return err
}

var (
	_ hsm.Provider = (*Provider)(nil)
	_ hsm.Token    = (*Token)(nil)
	_ hsm.Attester = (*Token)(nil)
)

func logger() *slog.Logger { return slog.Default().With("component", "cloudkms") }

// keyIDOf returns the last segment of a resource name.
func keyIDOf(name string) string { return name[strings.LastIndexByte(name, '/')+1:] }
