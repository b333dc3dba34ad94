package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// loadSpec is one measured configuration: requests of one kind on one topic with a
// fixed number in flight. Requests completing during warmup are not counted; the
// window is what the figures describe.
type loadSpec struct {
	topic          string
	args           json.RawMessage
	inflight       int
	warmup, window time.Duration
	brokerPID      int
	// onWindow, when set, runs at the start of the window; the function it
	// returns runs at its end (profilers).
	onWindow func() (stop func())
}

type loadResult struct {
	InFlight  int     `json:"in_flight"`
	Completed int     `json:"completed"`
	Errors    int     `json:"errors"`
	FirstErr  string  `json:"first_error,omitempty"`
	Rate      float64 `json:"per_second"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	// Cores used during the window: this process (appliance, client and the
	// in-process SoftHSM2), the broker, and every other process on the machine
	// (other work on a shared machine distorts the figures; it is shown, not hidden).
	CPUSelf   float64 `json:"cpu_self_cores"`
	CPUBroker float64 `json:"cpu_broker_cores"`
	CPUOthers float64 `json:"cpu_others_cores"`
	MeanMs    float64 `json:"mean_ms"`
	// Goroutines at the busiest sample: the appliance's (by pprof label) and the
	// whole process's.
	ApplianceGoroutines int `json:"appliance_goroutines"`
	ProcessGoroutines   int `json:"process_goroutines"`
	// Steps is the device's step trace over the window: wall time per request in
	// each step, and how often each ran (the finisher's steps once a batch).
	Steps     map[string]float64 `json:"step_ms_per_request"`
	StepCalls map[string]int     `json:"step_calls"`

	window time.Duration
}

// stepTimes adds up the device's step trace (device.Options.Trace).
type stepTimes struct {
	mu sync.Mutex
	stepSnap
}

type stepSnap struct {
	d map[string]time.Duration
	n map[string]int
}

var steps = &stepTimes{stepSnap: stepSnap{d: map[string]time.Duration{}, n: map[string]int{}}}

func (s *stepTimes) add(step string, d time.Duration) {
	s.mu.Lock()
	s.d[step] += d
	s.n[step]++
	s.mu.Unlock()
}

func (s *stepTimes) snap() stepSnap {
	s.mu.Lock()
	defer s.mu.Unlock()
	return stepSnap{maps.Clone(s.d), maps.Clone(s.n)}
}

func (s stepSnap) since(s0 stepSnap) stepSnap {
	out := stepSnap{d: map[string]time.Duration{}, n: map[string]int{}}
	for k := range s.d {
		out.d[k], out.n[k] = s.d[k]-s0.d[k], s.n[k]-s0.n[k]
	}
	return out
}

type lane struct {
	lat      []time.Duration
	done     int
	errs     int
	firstErr string
}

func runLoad(o *operator, s loadSpec) (loadResult, error) {
	start := time.Now()
	t1 := start.Add(s.warmup)
	t2 := t1.Add(s.window)
	lanes := make([]lane, s.inflight)
	var wg sync.WaitGroup
	withLabel(labelClient, func(context.Context) {
		for i := range lanes {
			wg.Add(1)
			go func(l *lane) {
				defer wg.Done()
				runLane(o, s, l, t1, t2)
			}(&lanes[i])
		}
	})

	time.Sleep(time.Until(t1))
	c0 := takeCPU(s.brokerPID)
	st0 := steps.snap()
	var stop func()
	if s.onWindow != nil {
		stop = s.onWindow()
	}
	res := loadResult{InFlight: s.inflight, window: s.window}
	tick := time.NewTicker(100 * time.Millisecond)
	for now := range tick.C {
		app, all := goroutineCounts()
		res.ApplianceGoroutines = max(res.ApplianceGoroutines, app)
		res.ProcessGoroutines = max(res.ProcessGoroutines, all)
		if !now.Before(t2) {
			break
		}
	}
	tick.Stop()
	if stop != nil {
		stop()
	}
	secs := s.window.Seconds()
	res.CPUSelf, res.CPUBroker, res.CPUOthers = takeCPU(s.brokerPID).since(c0, secs)
	st := steps.snap().since(st0)
	wg.Wait()

	summarize(&res, lanes)
	if res.Completed == 0 {
		return res, fmt.Errorf("%w (first error: %s)", errNoReplies, res.FirstErr)
	}
	res.Steps, res.StepCalls = map[string]float64{}, st.n
	for k, d := range st.d {
		res.Steps[k] = ms(d) / float64(res.Completed)
	}
	return res, nil
}

// summarize fills throughput and latency from the lanes of a finished window.
func summarize(res *loadResult, lanes []lane) {
	var lat []time.Duration
	for _, l := range lanes {
		lat = append(lat, l.lat...)
		res.Completed += l.done
		res.Errors += l.errs
		if res.FirstErr == "" {
			res.FirstErr = l.firstErr
		}
	}
	res.Rate = float64(res.Completed) / res.window.Seconds()
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	if len(lat) > 0 {
		res.MeanMs = ms(sum / time.Duration(len(lat)))
	}
	res.P50, res.P99 = ms(percentile(lat, 0.50)), ms(percentile(lat, 0.99))
}

// runLane keeps one request in flight until the window ends. Latency is kept for
// requests sent inside the window; throughput counts replies that arrive inside it.
func runLane(o *operator, s loadSpec, l *lane, t1, t2 time.Time) {
	keepInFlight(l, t1, t2, func() error {
		r, err := o.call(s.topic, s.args, 30*time.Second)
		if err == nil && !r.OK {
			err = fmt.Errorf("%s: %v", r.Cmd, r.Error)
		}
		return err
	})
}

// errLaneDone ends a lane before its window does (a load with nothing left to send).
var errLaneDone = errors.New("nothing left to send")

// keepInFlight runs call back to back from now until t2, counting into l what
// falls inside the window [t1, t2).
func keepInFlight(l *lane, t1, t2 time.Time, call func() error) {
	for {
		st := time.Now()
		if !st.Before(t2) {
			return
		}
		err := call()
		en := time.Now()
		if errors.Is(err, errLaneDone) {
			l.errs++
			l.firstErr = err.Error()
			return
		}
		if err != nil {
			if !st.Before(t1) {
				l.errs++
				if l.firstErr == "" {
					l.firstErr = err.Error()
				}
			}
			// A refusing peer answers at once; do not spin on it.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !en.Before(t1) && en.Before(t2) {
			l.done++
		}
		if !st.Before(t1) {
			l.lat = append(l.lat, en.Sub(st))
		}
	}
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// procCPU is a process's user+system CPU time in seconds, from /proc (in
// USER_HZ ticks, 100 per second on Linux).
func procCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces; the fields after it do not.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// machineCPU is the busy time of all CPUs in seconds, from /proc/stat.
func machineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	busy := 0.0
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is already in user
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / 100
}

// cpuSnap is CPU time used so far by this process, another process (the broker or
// the daemon) and the whole machine.
type cpuSnap struct{ self, other, machine float64 }

func takeCPU(pid int) cpuSnap { return cpuSnap{procCPU(os.Getpid()), procCPU(pid), machineCPU()} }

// since returns cores used since c0 over secs: by this process, by the other
// process, and by everything else on the machine.
func (c cpuSnap) since(c0 cpuSnap, secs float64) (self, other, rest float64) {
	self, other = (c.self-c0.self)/secs, (c.other-c0.other)/secs
	rest = max(0, (c.machine-c0.machine)/secs-self-other)
	return self, other, rest
}

// errNoReplies marks a load run in which nothing was answered.
var errNoReplies = errors.New("no request was answered")

// goroutineCounts returns the goroutines carrying the appliance label, and all.
func goroutineCounts() (appliance, all int) {
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		return 0, runtime.NumGoroutine()
	}
	// Groups look like "N @ pc pc ..." followed by "# labels: {...}" when labelled.
	want := fmt.Sprintf("%q:%q", labelKey, labelAppliance)
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if c, rest, ok := strings.Cut(line, " @ "); ok && rest != "" {
			n, _ = strconv.Atoi(c)
			all += n
			continue
		}
		if strings.HasPrefix(line, "# labels:") && strings.Contains(line, want) {
			appliance += n
		}
	}
	return appliance, all
}
