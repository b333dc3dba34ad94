// Package leds shows the appliance's state on LEDs: a status LED, LEDs for HSMs or
// single slots, and a short flash for every signature. The drivers are GPIO lines
// through periph.io, Linux LED-class devices (/sys/class/leds, blinking with the
// kernel's timer trigger so the CPU is not woken for it) and none.
//
// What each state looks like is in docs/leds.md; the mapping is StatusPattern,
// HSMPattern and SlotPattern.
package leds

import "time"

// Pattern is what one LED does.
type Pattern int

const (
	Off Pattern = iota
	On
	SlowBlink
	FastBlink
	DoubleBlink
)

// Timings. Slow and fast differ by a factor of eight so that they are told apart at a
// glance, and double blink is the only uneven one, so an error never looks like a
// state that is merely waiting.
const (
	SlowOn, SlowOff     = 1000 * time.Millisecond, 1000 * time.Millisecond
	FastOn, FastOff     = 125 * time.Millisecond, 125 * time.Millisecond
	DoubleOn, DoubleGap = 150 * time.Millisecond, 150 * time.Millisecond
	DoublePause         = 1050 * time.Millisecond
	// FlashDuration is how long an activity flash inverts an LED.
	FlashDuration = 80 * time.Millisecond
)

type step struct {
	on bool
	d  time.Duration
}

// steps is one period of the pattern; a single step is a steady level.
func (p Pattern) steps() []step {
	switch p {
	case On:
		return []step{{on: true}}
	case SlowBlink:
		return []step{{true, SlowOn}, {false, SlowOff}}
	case FastBlink:
		return []step{{true, FastOn}, {false, FastOff}}
	case DoubleBlink:
		return []step{{true, DoubleOn}, {false, DoubleGap}, {true, DoubleOn}, {false, DoublePause}}
	}
	return []step{{on: false}}
}

// timer returns the on and off times of a symmetric-enough blink that the kernel's
// timer trigger can run by itself.
func (p Pattern) timer() (on, off time.Duration, ok bool) {
	switch p {
	case SlowBlink:
		return SlowOn, SlowOff, true
	case FastBlink:
		return FastOn, FastOff, true
	}
	return 0, 0, false
}

func (p Pattern) String() string {
	switch p {
	case Off:
		return "off"
	case On:
		return "on"
	case SlowBlink:
		return "slow blink"
	case FastBlink:
		return "fast blink"
	case DoubleBlink:
		return "double blink"
	}
	return "unknown"
}
