package hsmtest

import (
	"context"
	"sync"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// Provider is an hsm.Provider over tokens the test adds and removes, as a PKCS#11
// module or pcscd sees tokens plugged in and taken away.
type Provider struct {
	mu     sync.Mutex
	tokens []hsm.Token
	faults []error
	scans  int
	closed bool
}

var _ hsm.Provider = (*Provider)(nil)

// NewProvider returns a provider listing toks (a *Token, or a Token's Core).
func NewProvider(toks ...hsm.Token) *Provider {
	return &Provider{tokens: toks}
}

// Add lists tok from the next scan on.
func (p *Provider) Add(tok hsm.Token) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tokens = append(p.tokens, tok)
}

// Remove stops listing the token with id.
func (p *Provider) Remove(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, t := range p.tokens {
		if t.Info().ID == id {
			p.tokens = append(p.tokens[:i:i], p.tokens[i+1:]...)
			return
		}
	}
}

// FailNext makes the next scan return err (a backend that does not answer).
func (p *Provider) FailNext(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = append(p.faults, err)
}

// Scans is how many times Tokens was called.
func (p *Provider) Scans() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.scans
}

// Closed says whether Close was called.
func (p *Provider) Closed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// Tokens implements hsm.Provider.
func (p *Provider) Tokens(ctx context.Context) ([]hsm.Token, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.scans++
	if len(p.faults) > 0 {
		err := p.faults[0]
		p.faults = p.faults[1:]
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return append([]hsm.Token(nil), p.tokens...), nil
}

// Close implements hsm.Provider.
func (p *Provider) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return nil
}
