// Package yubikey is the YubiKey PIV backend, on github.com/go-piv/piv-go through
// pcscd. Every YubiKey seen through PC/SC is an HSM with id yubikey-<serial>; its CA
// slots are the PIV key slots 9a, 9c, 9d, 9e and 82..95.
package yubikey

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/go-piv/piv-go/v2/piv"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// Options are what the appliance knows about a YubiKey: its PIN, how to get its
// management key, and which attestation roots to trust.
type Options struct {
	PIN string
	// ManagementKey is an explicit management key. Without it the key is read from
	// the card's PIN-protected metadata (the YubiKey convention: ykman's
	// "--protect"), so the appliance needs only the PIN.
	ManagementKey []byte
	// AllowDefaults lets the appliance fall back to the factory PIN and management
	// key. For labs only: a card still on its defaults protects nothing.
	AllowDefaults bool
}

// ProviderOptions configure the backend.
type ProviderOptions struct {
	Default  Options
	BySerial map[uint32]Options
	// AttestationRoots verify attestation chains; nil means Yubico's roots.
	AttestationRoots *x509.CertPool
	// IdleRelease closes the card after this long without use, so other programs
	// (yubico-piv-tool, ykman) can reach it; 0 means 3 s.
	IdleRelease time.Duration
	// CardState, when set, is asked before a card is opened (hotplug.CardState):
	// a reader is opened only when pcscd says a free card is in it, and the handle
	// of an open that failed halfway is released once pcscd saw its card go.
	CardState func(reader string) (present, held bool, events uint16, err error)
}

// Provider finds YubiKeys through pcscd.
type Provider struct {
	opts ProviderOptions

	mu     sync.Mutex
	tokens map[uint32]*Token
	// quarantine holds readers whose card failed mid-operation: they are not
	// opened again until pcscd has seen the card leave or come (its event count
	// moved) or a while has passed, since an open of a card that is going away
	// fails and holds the reader until it is released (see openCard).
	qmu        sync.Mutex // separate from mu: tokens ask while holding their own lock
	quarantine map[string]quarantined
}

type quarantined struct {
	events uint16
	until  time.Time
}

// quarantineTime bounds how long a reader stays closed when pcscd sees no change:
// the card was reset but never left.
const quarantineTime = 3 * time.Second

// NewProvider returns the backend. It does not touch pcscd until Tokens is called.
func NewProvider(opts ProviderOptions) *Provider {
	if opts.IdleRelease <= 0 {
		opts.IdleRelease = 3 * time.Second
	}
	return &Provider{opts: opts, tokens: map[uint32]*Token{}, quarantine: map[string]quarantined{}}
}

func (p *Provider) options(serial uint32) Options {
	if o, ok := p.opts.BySerial[serial]; ok {
		return o
	}
	return p.opts.Default
}

// Tokens lists the YubiKeys present now. A reader whose card the appliance holds is
// not probed again; a YubiKey no longer found is marked absent, with its PIN kept so
// it signs again when it comes back.
func (p *Provider) Tokens(ctx context.Context) ([]hsm.Token, error) {
	readers, err := cards()
	if err != nil {
		p.markAllAbsent("pcscd: " + err.Error())
		return nil, fmt.Errorf("%w: pcscd: %v", hsm.ErrOffline, err)
	}
	seen := map[uint32]bool{}
	var out []hsm.Token
	for _, r := range readers {
		if ctx.Err() != nil {
			break
		}
		if t := p.holding(r); t != nil {
			if t.stillThere() {
				seen[t.serial] = true
				out = append(out, t)
				continue
			}
		}
		if !p.usable(r) {
			continue
		}
		serial, version, err := p.probe(r)
		if err != nil {
			continue // an empty reader, or a card that is not a YubiKey
		}
		seen[serial] = true
		out = append(out, p.attach(serial, r, version))
	}
	p.mu.Lock()
	for s, t := range p.tokens {
		if !seen[s] {
			t.markAbsent("no longer seen through pcscd")
		}
	}
	p.mu.Unlock()
	return out, nil
}

// holding returns the token whose open card sits in reader, if any.
func (p *Provider) holding(reader string) *Token {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.tokens {
		if t.holds(reader) {
			return t
		}
	}
	return nil
}

func (p *Provider) attach(serial uint32, reader string, v piv.Version) *Token {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.tokens[serial]
	if !ok {
		t = &Token{p: p, serial: serial, id: fmt.Sprintf("yubikey-%d", serial), retries: -1}
		o := p.options(serial)
		if o.PIN != "" {
			t.pin, t.pinFromConfig = o.PIN, true
		}
		p.tokens[serial] = t
	}
	t.seen(reader, v)
	return t
}

func (p *Provider) markAllAbsent(why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.tokens {
		t.markAbsent(why)
	}
}

// cardState asks pcscd, when the provider can, whether a card sits in reader and
// whether another program holds it. A quarantined reader reads as empty.
func (p *Provider) cardState(reader string) (present, held bool) {
	if p.opts.CardState == nil {
		return true, false
	}
	present, held, events, err := p.askState(reader)
	if err != nil {
		return false, false
	}
	p.qmu.Lock()
	defer p.qmu.Unlock()
	if q, ok := p.quarantine[reader]; ok {
		if q.events == events && time.Now().Before(q.until) {
			return false, held
		}
		delete(p.quarantine, reader)
	}
	return present, held
}

// fence quarantines a reader after a failure in the middle of an operation.
func (p *Provider) fence(reader string) {
	if p.opts.CardState == nil {
		return
	}
	_, _, events, err := p.askState(reader)
	if err != nil {
		return
	}
	p.qmu.Lock()
	p.quarantine[reader] = quarantined{events: events, until: time.Now().Add(quarantineTime)}
	p.qmu.Unlock()
}

// usable: a card is in the reader and nobody holds it.
func (p *Provider) usable(reader string) bool {
	present, held := p.cardState(reader)
	return present && !held
}

// probe opens a reader just long enough to read the card's serial and version.
func (p *Provider) probe(reader string) (uint32, piv.Version, error) {
	yk, err := p.openCard(reader)
	if err != nil {
		return 0, piv.Version{}, err
	}
	defer yk.Close()
	serial, err := yk.Serial()
	return serial, yk.Version(), err
}

// Close releases every card.
func (p *Provider) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.tokens {
		t.Close()
	}
	return nil
}

var (
	_ hsm.Provider = (*Provider)(nil)
	_ hsm.Token    = (*Token)(nil)
)

// isTransport tells PC/SC failures (card pulled, reader gone, pcscd restarted,
// another process holding the card) from answers of the card itself.
func isTransport(err error) bool {
	if err == nil {
		return false
	}
	var ae piv.AuthErr
	var sw interface{ Status() uint16 }
	if errors.As(err, &ae) || errors.As(err, &sw) || errors.Is(err, piv.ErrNotFound) {
		return false
	}
	// piv-go wraps PC/SC return codes in these words; its own argument checks
	// ("input must be a hashed message") are not transport failures.
	msg := err.Error()
	for _, w := range []string{"transmitting", "connecting to", "transaction", "smart card", "scard", "pcsc", "reader"} {
		if strings.Contains(msg, w) {
			return true
		}
	}
	return false
}

func logger() *slog.Logger { return slog.Default().With("component", "yubikey") }
