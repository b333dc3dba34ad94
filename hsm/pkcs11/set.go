package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// Selection is one configured choice of tokens: a module, the tokens of it that an
// RFC 7512 URI selects (empty: every initialised token), and their PIN.
type Selection struct {
	Module string
	Token  string
	// PIN reads the PIN when it is needed (from the configuration or a file); ""
	// means none is configured.
	PIN func() (string, error)
}

// Set is every configured PKCS#11 module as one hsm.Provider. The registry
// holds it for the daemon's life and a reload changes what is inside: modules added
// to the configuration are loaded, PINs that changed are tried, tokens that appeared
// are logged in to.
//
// A module dropped from the configuration stays loaded until the next restart: the
// registry keeps every token it has seen (so slots keep their state), and unloading
// a library under a worker that may be inside one of its calls is not safe. The
// reload reply says so.
type Set struct {
	mu   sync.Mutex
	mods []*setModule // in load order
	// problems are those of the last Configure, for the status document: a
	// configuration that yields no HSM must say so, not run with none.
	problems []string
}

// Problems returns what went wrong at the last Configure (nil: nothing).
func (s *Set) Problems() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.problems...)
}

type setModule struct {
	mod *Module
	// cfgs are the [[pkcs11]] blocks naming this module now (several blocks may
	// select different tokens of one module); none once it was dropped.
	cfgs []Selection
	// tried is the PIN last tried per token serial: a PIN is tried once, and again
	// only when the configuration gives another one.
	tried map[string]string
	// warned remembers tokens already reported as having no PIN configured.
	warned map[string]bool
}

func (m *setModule) path() string { return m.mod.Path() }

// Configure makes the set follow cfgs. It returns what it did, what waits for a
// restart, and what went wrong (a module that does not load must not stop the
// others, nor the appliance: its slots show as disconnected).
func (s *Set) Configure(ctx context.Context, cfgs []Selection) (applied, restart, problems []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byPath := map[string][]Selection{}
	var order []string
	for _, c := range cfgs {
		if _, ok := byPath[c.Module]; !ok {
			order = append(order, c.Module)
		}
		byPath[c.Module] = append(byPath[c.Module], c)
	}
	loaded := map[string]*setModule{}
	for _, m := range s.mods {
		loaded[m.path()] = m
		if _, ok := byPath[m.path()]; !ok && len(m.cfgs) > 0 {
			m.cfgs = nil
			slog.Warn("PKCS#11 module dropped from the configuration; it stays in use until restart", "module", m.path())
			restart = append(restart, "pkcs11 module "+m.path()+" removed (its tokens stay in use until restart)")
		}
	}
	for _, path := range order {
		m := loaded[path]
		if m == nil {
			mod, err := Open(path)
			if err != nil {
				slog.Error("PKCS#11 module not available", "module", path, "err", err)
				problems = append(problems, fmt.Sprintf("pkcs11 module %s: %v", path, err))
				continue
			}
			m = &setModule{mod: mod, tried: map[string]string{}}
			s.mods = append(s.mods, m)
			applied = append(applied, "pkcs11 module "+path+" loaded")
		} else if len(m.cfgs) > 0 {
			// Known module: rescan with a re-initialisation, so that tokens created or
			// plugged in since it was loaded appear (many modules list tokens only
			// in C_Initialize). This is what an operator's reload after plugging in
			// a key is for.
			if _, err := m.mod.Rescan(ctx); err != nil {
				slog.Warn("PKCS#11 rescan failed", "module", path, "err", err)
				problems = append(problems, fmt.Sprintf("pkcs11 module %s: rescan: %v", path, err))
			}
		}
		m.cfgs, m.warned = byPath[path], map[string]bool{}
		toks, err := m.mod.Tokens(ctx)
		if err != nil {
			problems = append(problems, fmt.Sprintf("pkcs11 module %s: %v", path, err))
			continue
		}
		problems = append(problems, selectionProblems(path, m.cfgs, toks)...)
		applied = append(applied, m.login(ctx, toks)...)
	}
	for _, p := range problems {
		slog.Error("PKCS#11 configuration problem", "problem", p)
	}
	s.problems = problems
	return applied, restart, problems
}

// softHSMHint is where SoftHSM2 looks for its tokens, the usual reason for none.
const softHSMHint = "for SoftHSM2: the tokens are in the directories.tokendir of the file " +
	"SOFTHSM2_CONF names (default /etc/softhsm2.conf); the daemon must see the same SOFTHSM2_CONF " +
	"as softhsm2-util did, and a token must be initialised (softhsm2-util --init-token)"

// selectionProblems names the [[pkcs11]] blocks that select nothing: a module with
// no initialised token, and a token URI that matches none of those present.
func selectionProblems(path string, cfgs []Selection, toks []hsm.Token) []string {
	var present []*Token
	var seen []string
	for _, ht := range toks {
		if t, ok := ht.(*Token); ok && t.Info().Present {
			present = append(present, t)
			seen = append(seen, fmt.Sprintf("%q (serial %s)", t.Label(), t.Info().Serial))
		}
	}
	if len(present) == 0 {
		return []string{fmt.Sprintf("pkcs11 module %s shows no initialised token; %s", path, softHSMHint)}
	}
	var out []string
	for _, c := range cfgs {
		if c.Token == "" {
			continue
		}
		sel, err := ParseURI(c.Token)
		if err != nil {
			out = append(out, fmt.Sprintf("pkcs11 token %q of %s: %v", c.Token, path, err))
			continue
		}
		if !slices.ContainsFunc(present, func(t *Token) bool { return sel.Matches(t.Label(), t.Info().Serial, "", "") }) {
			out = append(out, fmt.Sprintf("pkcs11 token %q matches no token of %s (it has %s)",
				c.Token, path, strings.Join(seen, ", ")))
		}
	}
	return out
}

// Tokens implements hsm.Provider: every token of every loaded module. Tokens that
// appeared since the last scan are logged in to here, so a token plugged in later is
// usable without a reload. A failing module is logged and skipped.
func (s *Set) Tokens(ctx context.Context) ([]hsm.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []hsm.Token
	var errs []error
	for _, m := range s.mods {
		toks, err := m.mod.Tokens(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, toks...)
		m.login(ctx, toks)
	}
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, err := range errs {
		slog.Warn("PKCS#11 scan failed", "err", err)
	}
	return out, nil
}

// login (the set's mu held) logs in to the tokens its blocks select, each PIN once.
// Problems are logged once per configuration, not at every scan.
func (m *setModule) login(ctx context.Context, toks []hsm.Token) (done []string) {
	for _, ht := range toks {
		t, ok := ht.(*Token)
		if !ok {
			continue
		}
		info := t.Info()
		if !info.Present {
			continue
		}
		for _, c := range m.cfgs {
			if c.Token != "" {
				sel, err := ParseURI(c.Token)
				if err != nil || !sel.Matches(t.Label(), info.Serial, "", "") {
					continue
				}
			}
			pin, err := c.readPIN()
			if err != nil {
				if !m.warned[info.Serial] {
					slog.Error("PKCS#11 PIN not readable", "hsm", info.ID, "err", err)
					m.warned[info.Serial] = true
				}
				break
			}
			if pin == "" {
				if !m.warned[info.Serial] {
					slog.Warn("no PIN configured; the token's keys cannot be used until a PIN is set (hsm.set_pin, or one stored with persist)", "hsm", info.ID)
					m.warned[info.Serial] = true
				}
				break
			}
			if prev, tried := m.tried[info.Serial]; tried && prev == pin {
				break
			}
			m.tried[info.Serial] = pin
			if err := hsm.Login(ctx, t, pin); err != nil {
				slog.Error("PIN refused; not retried", "hsm", info.ID, "err", err)
				done = append(done, "pkcs11 token "+info.ID+": PIN refused")
			} else {
				slog.Info("logged in", "hsm", info.ID)
				done = append(done, "pkcs11 token "+info.ID+": logged in")
			}
			break // the first block that selects a token gives its PIN
		}
	}
	return done
}

// Close unloads every module, dropped ones included.
func (s *Set) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, m := range s.mods {
		errs = append(errs, m.mod.Close())
	}
	s.mods = nil
	return errors.Join(errs...)
}

func (c Selection) readPIN() (string, error) {
	if c.PIN == nil {
		return "", nil
	}
	return c.PIN()
}

var _ hsm.Provider = (*Set)(nil)
