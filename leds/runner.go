package leds

import (
	"log/slog"
	"sync"
	"time"
)

// runner drives one LED: it runs the LED's pattern on a goroutine of its own and lays
// activity flashes over it. Steady patterns and kernel-timed blinks leave the
// goroutine asleep.
type runner struct {
	name  string
	light Light

	mu   sync.Mutex
	want Pattern

	wake  chan struct{}
	flash chan struct{}
	quit  chan struct{}
	done  chan struct{}

	failing bool // the last write failed; logged once until a write works again
}

func newRunner(name string, l Light) *runner {
	r := &runner{name: name, light: l, want: Off,
		wake: make(chan struct{}, 1), flash: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{})}
	go r.loop()
	return r
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// set makes p the LED's pattern; setting the pattern it already shows changes
// nothing, so a blink is not restarted by every status update.
func (r *runner) set(p Pattern) {
	r.mu.Lock()
	r.want = p
	r.mu.Unlock()
	poke(r.wake)
}

func (r *runner) pattern() Pattern {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.want
}

// flashOnce inverts the LED for FlashDuration. Flashes that come while one is shown
// merge into it: a burst of signatures is a flicker, not a queue.
func (r *runner) flashOnce() { poke(r.flash) }

// close stops the goroutine, then turns the LED off and releases it.
func (r *runner) close() {
	close(r.quit)
	<-r.done
	r.check(r.light.Close())
}

func (r *runner) check(err error) {
	switch {
	case err != nil && !r.failing:
		slog.Warn("LED write failed", "led", r.name, "err", err)
		r.failing = true
	case err == nil && r.failing:
		slog.Info("LED writes work again", "led", r.name)
		r.failing = false
	}
}

func (r *runner) loop() {
	defer close(r.done)
	var (
		cur      = Pattern(-1) // nothing shown yet: the first set always applies
		steps    []step
		idx      int
		level    bool // what a software-driven LED shows now
		hw       bool // the kernel is blinking it
		flashing bool
		timer    = time.NewTimer(time.Hour)
		timerC   <-chan time.Time
	)
	timer.Stop()
	// show starts the current pattern from its first step.
	show := func() {
		timer.Stop()
		timerC, hw = nil, false
		if b, ok := r.light.(blinker); ok {
			if on, off, ok := cur.timer(); ok {
				r.check(b.Blink(on, off))
				hw = true
				return
			}
		}
		steps, idx = cur.steps(), 0
		level = steps[0].on
		r.check(r.light.Set(level))
		if len(steps) > 1 {
			timer.Reset(steps[0].d)
			timerC = timer.C
		}
	}
	for {
		select {
		case <-r.quit:
			timer.Stop()
			return
		case <-r.wake:
			if p := r.pattern(); p != cur {
				cur = p
				if !flashing {
					show()
				}
			}
		case <-r.flash:
			if flashing || cur < 0 {
				continue
			}
			flashing = true
			timer.Stop()
			// A kernel-timed blink's level is unknown here: going dark and then
			// restarting the blink (which starts lit) is what shows.
			r.check(r.light.Set(!level && !hw))
			timer.Reset(FlashDuration)
			timerC = timer.C
		case <-timerC:
			if flashing {
				flashing = false
				show()
				continue
			}
			idx = (idx + 1) % len(steps)
			level = steps[idx].on
			r.check(r.light.Set(level))
			timer.Reset(steps[idx].d)
		}
	}
}
