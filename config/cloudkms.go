package config

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// CloudKMS is one Google Cloud KMS key ring, a [[cloudkms]] block. Blocks with the
// same credentials and endpoint share one connection.
type CloudKMS struct {
	// KeyRing is the resource name: projects/<project>/locations/<location>/keyRings/<ring>.
	KeyRing string `toml:"key_ring"`
	// ID makes the HSM id cloudkms-<id>. Default: the key ring's own id, lowercased,
	// '_' read as '-'. Two blocks may not end with the same id: set id on one of them
	// (slot ids, and so the appliance's slot state, hang on it, so it is never
	// derived from anything that could change).
	ID string `toml:"id"`
	// CredentialsFile is a service-account key (JSON). Empty: Application Default
	// Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's, or the metadata server).
	CredentialsFile string `toml:"credentials_file"`
	// Endpoint is host:port of the API. Empty: cloudkms.googleapis.com:443. For
	// private endpoints, and for the test server.
	Endpoint string `toml:"endpoint"`
	// Insecure talks plaintext gRPC without credentials: only to a loopback endpoint
	// (a local test server), never to Google.
	Insecure bool `toml:"insecure"`
	// CallTimeout bounds one attempt of one API call ("10s" when unset); retries,
	// their backoff and presence checks scale with it. ProbeInterval is how often a
	// reachable key ring is checked ("10s" when unset).
	CallTimeout   time.Duration `toml:"call_timeout"`
	ProbeInterval time.Duration `toml:"probe_interval"`
}

var (
	kmsKeyRing = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[a-zA-Z0-9_-]{1,63}$`)
	kmsShortID = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
)

// ShortID is the id in cloudkms-<id>: the configured one, else derived from the key
// ring's name.
func (k CloudKMS) ShortID() string {
	if k.ID != "" {
		return k.ID
	}
	r := k.KeyRing[strings.LastIndexByte(k.KeyRing, '/')+1:]
	return strings.ReplaceAll(strings.ToLower(r), "_", "-")
}

// HSMID is the HSM id of the key ring, as it appears in slot ids.
func (k CloudKMS) HSMID() string { return "cloudkms-" + k.ShortID() }

func (c *Config) checkCloudKMS() error {
	seen := map[string]string{}
	rings := map[string]bool{}
	for i, k := range c.CloudKMS {
		field := fmt.Sprintf("cloudkms[%d]", i)
		if !kmsKeyRing.MatchString(k.KeyRing) {
			return fmt.Errorf("%w: %s: key_ring %q (want projects/<project>/locations/<location>/keyRings/<ring>)", ErrInvalid, field, k.KeyRing)
		}
		if rings[k.KeyRing] {
			return fmt.Errorf("%w: %s: key ring %s is configured twice", ErrInvalid, field, k.KeyRing)
		}
		rings[k.KeyRing] = true
		id := k.ShortID()
		if !kmsShortID.MatchString(id) {
			return fmt.Errorf("%w: %s: id %q (want 1 to 63 of a-z 0-9 -, starting with a letter or digit; set id)", ErrInvalid, field, id)
		}
		if other, ok := seen[id]; ok {
			return fmt.Errorf("%w: %s: key rings %s and %s would both be cloudkms-%s; set id on one of them", ErrInvalid, field, other, k.KeyRing, id)
		}
		seen[id] = k.KeyRing
		if k.Endpoint != "" && !hostPort(k.Endpoint) {
			return fmt.Errorf("%w: %s: endpoint %q (want host:port, without a scheme)", ErrInvalid, field, k.Endpoint)
		}
		if k.Insecure {
			if k.CredentialsFile != "" {
				return fmt.Errorf("%w: %s: insecure sends no credentials; drop credentials_file or insecure", ErrInvalid, field)
			}
			if !loopback(k.Endpoint) {
				return fmt.Errorf("%w: %s: insecure needs a loopback endpoint (127.0.0.1:<port>, [::1]:<port>, localhost:<port>)", ErrInvalid, field)
			}
		}
	}
	return nil
}

func hostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || strings.ContainsAny(host, "/@") {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n > 0 && n < 65536
}

func loopback(endpoint string) bool {
	host, _, err := net.SplitHostPort(endpoint)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
