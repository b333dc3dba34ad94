package leds

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// Controller keeps every configured LED showing the appliance's state. Its methods
// are safe for concurrent use and never block on an LED.
type Controller struct {
	mu     sync.Mutex
	view   View
	status *runner
	hsms   []assigned
	slots  []assigned
	seen   map[string]hsmSeen // last presence and PIN per HSM
	closed bool
}

type assigned struct {
	cfg config.LED
	r   *runner
}

type hsmSeen struct{ present, pinSet bool }

// Open takes every configured LED and shows Starting. An LED that cannot be opened
// (a missing or busy GPIO line, a missing LED-class device) is an error naming it,
// or with on_error = "warn" a warning and a dark LED.
func Open(cfg config.LEDs) (*Controller, error) {
	c := &Controller{view: View{Phase: Starting, SignErrors: map[string]bool{}}, seen: map[string]hsmSeen{}}
	open := func(field string, led config.LED) (*runner, error) {
		l, err := openLight(cfg.SysfsRoot, led)
		if err != nil {
			err = fmt.Errorf("%s: %w", field, err)
			if cfg.OnError == config.LEDOnErrorWarn {
				slog.Warn("LED not available; left dark", "err", err)
				return nil, nil
			}
			return nil, err
		}
		if l == nil {
			return nil, nil
		}
		return newRunner(field+" ("+led.Driver+" "+led.Name+")", l), nil
	}
	var err error
	if c.status, err = open("leds.status", cfg.Status); err != nil {
		return nil, err
	}
	for i, led := range cfg.HSMs {
		r, err := open(fmt.Sprintf("leds.hsm[%d]", i), led)
		if err != nil {
			c.Close()
			return nil, err
		}
		if r != nil {
			c.hsms = append(c.hsms, assigned{led, r})
		}
	}
	for i, led := range cfg.Slots {
		r, err := open(fmt.Sprintf("leds.slot[%d]", i), led)
		if err != nil {
			c.Close()
			return nil, err
		}
		if r != nil {
			c.slots = append(c.slots, assigned{led, r})
		}
	}
	c.mu.Lock()
	c.apply()
	c.mu.Unlock()
	return c, nil
}

// SetPhase shows the daemon's phase (starting, running, reloading, updating, stopping).
func (c *Controller) SetPhase(p Phase) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.view.Phase = p
	c.apply()
}

// SetFault shows (or, with "", clears) a fault that no slot explains.
func (c *Controller) SetFault(fault string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.view.Fault = fault
	c.apply()
}

// Update shows a new status document. A token that comes back or accepts its PIN
// clears the signing errors of its slots: what failed was most likely its absence.
func (c *Controller) Update(st protocol.Status) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range st.HSMs {
		was, known := c.seen[h.ID]
		now := hsmSeen{h.Present, h.PIN.Set}
		if known && ((!was.present && now.present) || (!was.pinSet && now.pinSet)) {
			for id := range c.view.SignErrors {
				if strings.HasPrefix(id, h.ID+"/") {
					delete(c.view.SignErrors, id)
				}
			}
		}
		c.seen[h.ID] = now
	}
	c.view.Status = st
	c.apply()
}

// Signed shows a signature on a slot: a flash on the slot's LEDs (its own, its HSM's,
// or the status LED when neither is assigned), and a failure on the token side as an
// error until the slot signs again. code is the reply's error code, "" for success.
func (c *Controller) Signed(slotID, code string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case code == "":
		delete(c.view.SignErrors, slotID)
	case TokenFault(code):
		c.view.SignErrors[slotID] = true
	}
	flashed := false
	for _, a := range c.slots {
		if a.cfg.SlotID == slotID {
			a.r.flashOnce()
			flashed = true
		}
	}
	hsmID, _, _ := strings.Cut(slotID, "/")
	for _, a := range c.hsms {
		if c.hsmOf(a.cfg) == hsmID {
			a.r.flashOnce()
			flashed = true
		}
	}
	if !flashed && c.status != nil {
		c.status.flashOnce()
	}
	c.apply()
}

// Patterns returns what every LED shows, by its configuration name; for tests and
// diagnostics.
func (c *Controller) Patterns() map[string]Pattern {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]Pattern{}
	if c.status != nil {
		out["status"] = c.status.pattern()
	}
	for _, a := range c.hsms {
		out["hsm:"+ledKey(a.cfg)] = a.r.pattern()
	}
	for _, a := range c.slots {
		out["slot:"+a.cfg.SlotID] = a.r.pattern()
	}
	return out
}

func ledKey(led config.LED) string {
	if led.HSM != "" {
		return led.HSM
	}
	return fmt.Sprintf("#%d", led.Position)
}

// Close turns every LED off and releases it.
func (c *Controller) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	if c.status != nil {
		c.status.close()
	}
	for _, a := range c.hsms {
		a.r.close()
	}
	for _, a := range c.slots {
		a.r.close()
	}
}

// hsmOf resolves an HSM LED's assignment against the current status.
func (c *Controller) hsmOf(led config.LED) string {
	if led.HSM != "" {
		return led.HSM
	}
	return HSMAt(c.view.Status, led.Position)
}

// apply (mu held) sets every LED's pattern from the view.
func (c *Controller) apply() {
	if c.closed {
		return
	}
	if c.status != nil {
		c.status.set(StatusPattern(c.view))
	}
	for _, a := range c.hsms {
		a.r.set(c.gate(HSMPattern(c.view, c.hsmOf(a.cfg))))
	}
	for _, a := range c.slots {
		a.r.set(c.gate(SlotPattern(c.view, a.cfg.SlotID)))
	}
}

// gate: until the first status is in (starting) and once stopping, the HSM and slot
// LEDs stay dark rather than show a state nobody has checked yet.
func (c *Controller) gate(p Pattern) Pattern {
	if c.view.Phase == Starting || c.view.Phase == Stopping {
		return Off
	}
	return p
}
