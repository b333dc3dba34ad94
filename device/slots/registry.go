package slots

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// Registry holds every HSM the appliance knows, by id, across rescans: a token that
// goes away stays listed (absent) so its slots keep their state.
type Registry struct {
	mu        sync.Mutex
	providers []hsm.Provider
	tokens    map[string]hsm.Token
	lastErr   map[int]string // per provider, so a backend that stays down is logged once
	scanMu    sync.Mutex     // one scan at a time: hotplug and the periodic scan overlap
}

// NewRegistry returns a registry over the given backends.
func NewRegistry(providers ...hsm.Provider) *Registry {
	return &Registry{providers: providers, tokens: map[string]hsm.Token{}, lastErr: map[int]string{}}
}

// Rescan asks every provider for its tokens. A failing provider is logged and skipped
// so one broken backend does not hide the others.
func (r *Registry) Rescan(ctx context.Context) error {
	r.scanMu.Lock()
	defer r.scanMu.Unlock()
	var firstErr error
	for i, p := range r.providers {
		toks, err := p.Tokens(ctx)
		if err != nil {
			if msg := err.Error(); r.lastErr[i] != msg {
				slog.Warn("HSM scan failed", "err", err)
				r.lastErr[i] = msg
			}
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if r.lastErr[i] != "" {
			slog.Info("HSM scan works again", "provider", i)
			delete(r.lastErr, i)
		}
		r.mu.Lock()
		for _, t := range toks {
			r.tokens[t.Info().ID] = t
		}
		r.mu.Unlock()
	}
	return firstErr
}

// Token returns the HSM with id.
func (r *Registry) Token(id string) (hsm.Token, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.tokens[id]
	if !ok {
		return nil, fmt.Errorf("%w: no HSM %q", hsm.ErrNotFound, id)
	}
	return t, nil
}

// Tokens returns every known HSM ordered by id.
func (r *Registry) Tokens() []hsm.Token {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]hsm.Token, 0, len(r.tokens))
	for _, t := range r.tokens {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Info().ID < out[j].Info().ID })
	return out
}

// Close closes every provider.
func (r *Registry) Close() error {
	for _, p := range r.providers {
		p.Close()
	}
	return nil
}
