package main

import (
	"bufio"
	"bytes"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A CPU profile cannot show where a serial worker loses wall-clock time: waiting for
// fsync, for a PUBACK or for a mutex uses no CPU. wallSampler therefore takes
// all-goroutine stack dumps at a fixed rate and classifies what the appliance's token
// worker (device.runWorker) and its MQTT dispatch (device.Handle) are doing.

const modulePath = "github.com/iot-hsm/iot-hsm/"

type frame struct {
	fn   string
	file string
	line int
}

type gstack struct {
	id     int
	status string
	frames []frame // innermost first
}

func (g gstack) has(pred func(string) bool) bool {
	for _, f := range g.frames {
		if pred(f.fn) {
			return true
		}
	}
	return false
}

func fnIs(name string) func(string) bool { return func(fn string) bool { return fn == name } }
func fnPrefix(p ...string) func(string) bool {
	return func(fn string) bool {
		for _, x := range p {
			if strings.HasPrefix(fn, x) {
				return true
			}
		}
		return false
	}
}
func fnContains(s ...string) func(string) bool {
	return func(fn string) bool {
		for _, x := range s {
			if strings.Contains(fn, x) {
				return true
			}
		}
		return false
	}
}

// parseStacks reads runtime.Stack(all) output.
func parseStacks(b []byte) []gstack {
	var out []gstack
	var cur *gstack
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "goroutine "):
			// goroutine 19 [sync.Mutex.Lock, 2 minutes]:
			out = append(out, gstack{})
			cur = &out[len(out)-1]
			f := strings.Fields(line)
			if len(f) > 1 {
				cur.id, _ = strconv.Atoi(f[1])
			}
			if i, j := strings.IndexByte(line, '['), strings.LastIndexByte(line, ']'); i >= 0 && j > i {
				cur.status, _, _ = strings.Cut(line[i+1:j], ",")
			}
		case cur == nil || line == "":
		case strings.HasPrefix(line, "\t"):
			if n := len(cur.frames); n > 0 && cur.frames[n-1].file == "" {
				loc := strings.TrimSpace(line)
				if k := strings.LastIndex(loc, " +0x"); k >= 0 {
					loc = loc[:k]
				}
				if k := strings.LastIndexByte(loc, ':'); k >= 0 {
					cur.frames[n-1].file = loc[:k]
					cur.frames[n-1].line, _ = strconv.Atoi(loc[k+1:])
				}
			}
		case strings.HasPrefix(line, "created by "):
			cur = nil // the creator's frame is not part of the stack
		default:
			fn := line
			if k := strings.LastIndexByte(fn, '('); k > 0 {
				fn = fn[:k]
			}
			cur.frames = append(cur.frames, frame{fn: fn})
		}
	}
	return out
}

type wallRule struct {
	name  string
	match func(g gstack) bool
}

func anyFrame(pred func(string) bool) func(gstack) bool {
	return func(g gstack) bool { return g.has(pred) }
}

var (
	isVerify = fnContains("crypto/ecdsa.Verify", "crypto/rsa.Verify", ").CheckSignature", "crypto/x509.(*Certificate).Verify")

	workerRules = []wallRule{
		{"idle (waiting for a job)", func(g gstack) bool {
			return strings.HasPrefix(g.status, "chan receive") && len(g.frames) > 0 && strings.HasSuffix(g.frames[0].fn, "device.(*Device).runWorker")
		}},
		{catSign, anyFrame(fnIs("github.com/miekg/pkcs11.(*Ctx).Sign"))},
		{catPKCS11, anyFrame(fnPrefix("github.com/miekg/pkcs11."))},
		{"reply-cache fsync (bbolt)", func(g gstack) bool {
			return g.has(fnPrefix("go.etcd.io/bbolt.")) && g.has(fnContains("datasync", "Fsync", "fsync"))
		}},
		{"reply-cache write (bbolt)", anyFrame(fnPrefix("go.etcd.io/bbolt."))},
		{catPublish, anyFrame(fnContains("/mqtt.(*Client).Publish"))},
		{"verification in Go", anyFrame(isVerify)},
		{"crypto/x509 build and parse", anyFrame(fnPrefix("crypto/x509."))},
		{"JSON", anyFrame(fnPrefix("encoding/json."))},
		{"waiting for a mutex", func(g gstack) bool {
			return strings.Contains(g.status, "Mutex") || strings.HasPrefix(g.status, "semacquire")
		}},
	}

	handleRules = []wallRule{
		// Token.Info does nothing but take the token's mutex, so any sample in it
		// (blocked, or woken and not yet running) is that wait.
		{"waiting for the token mutex (Token.Info)", anyFrame(fnContains("hsm/pkcs11.(*Token).Info"))},
		{"store reads (bbolt)", anyFrame(fnPrefix("go.etcd.io/bbolt."))},
		{"JSON decode", anyFrame(fnPrefix("encoding/json."))},
		{"waiting for a mutex", func(g gstack) bool {
			return strings.Contains(g.status, "Mutex") || strings.HasPrefix(g.status, "semacquire")
		}},
	}
)

type bucket struct {
	n    int
	locs map[string]int
}

type wallSampler struct {
	root     string
	interval time.Duration
	stop     chan struct{}
	done     chan struct{}

	samples int
	workers map[int]map[string]*bucket // by goroutine id
	handle  map[string]*bucket
	inside  int // samples with a goroutine inside device.Handle
}

type share struct {
	Name string  `json:"name"`
	Frac float64 `json:"fraction"`
	Loc  string  `json:"where,omitempty"` // innermost product frame, file:line
}

type wallProfile struct {
	Samples     int     `json:"samples"`
	Worker      []share `json:"worker"`
	HandleFrac  float64 `json:"dispatch_in_handle"`
	Handle      []share `json:"dispatch"`
	SampleEvery string  `json:"sample_every"`
}

func startWallSampler(root string, every time.Duration) *wallSampler {
	s := &wallSampler{root: root, interval: every, stop: make(chan struct{}), done: make(chan struct{}),
		workers: map[int]map[string]*bucket{}, handle: map[string]*bucket{}}
	go s.run()
	return s
}

func (s *wallSampler) run() {
	defer close(s.done)
	buf := make([]byte, 1<<20)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		n := runtime.Stack(buf, true)
		for n == len(buf) {
			buf = make([]byte, 2*len(buf))
			n = runtime.Stack(buf, true)
		}
		s.samples++
		for _, g := range parseStacks(buf[:n]) {
			if g.has(fnContains("device.(*Device).runWorker")) {
				w := s.workers[g.id]
				if w == nil {
					w = map[string]*bucket{}
					s.workers[g.id] = w
				}
				s.add(w, classify(g, workerRules), g)
			}
			if g.has(fnContains("device.(*Device).Handle")) {
				s.inside++
				s.add(s.handle, classify(g, handleRules), g)
			}
		}
	}
}

func classify(g gstack, rules []wallRule) string {
	for _, r := range rules {
		if r.match(g) {
			return r.name
		}
	}
	return "other"
}

func (s *wallSampler) add(m map[string]*bucket, cat string, g gstack) {
	b := m[cat]
	if b == nil {
		b = &bucket{locs: map[string]int{}}
		m[cat] = b
	}
	b.n++
	if loc := s.productFrame(g); loc != "" {
		b.locs[loc]++
	}
}

// productFrame names where in the product the goroutine is: the device core's call
// site and the innermost frame of this module (the benchmark itself is package main),
// as paths relative to the module root: "device/dispatch.go:217 → store/replies.go:65".
func (s *wallSampler) productFrame(g gstack) string {
	var inner, core string
	for _, f := range g.frames {
		if !strings.HasPrefix(f.fn, modulePath) {
			continue
		}
		loc := fmt.Sprintf("%s:%d", strings.TrimPrefix(f.file, s.root+"/"), f.line)
		if inner == "" {
			inner = loc
		}
		if strings.HasPrefix(f.fn, modulePath+"device.") {
			core = loc
			break
		}
	}
	if core == "" || core == inner {
		return inner
	}
	return core + " → " + inner
}

func (s *wallSampler) finish() wallProfile {
	close(s.stop)
	<-s.done
	p := wallProfile{Samples: s.samples, SampleEvery: s.interval.String()}
	if s.samples == 0 {
		return p
	}
	// The busiest worker is the token's; a control worker, if any, idles.
	var busiest map[string]*bucket
	most := -1
	for _, w := range s.workers {
		busy := 0
		for name, b := range w {
			if !strings.HasPrefix(name, "idle") {
				busy += b.n
			}
		}
		if busy > most {
			busiest, most = w, busy
		}
	}
	p.Worker = shares(busiest, s.samples)
	p.HandleFrac = float64(s.inside) / float64(s.samples)
	p.Handle = shares(s.handle, s.samples)
	return p
}

func shares(m map[string]*bucket, total int) []share {
	var out []share
	for name, b := range m {
		sh := share{Name: name, Frac: float64(b.n) / float64(total)}
		best := 0
		for loc, n := range b.locs {
			if n > best || n == best && loc < sh.Loc {
				sh.Loc, best = loc, n
			}
		}
		out = append(out, sh)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Frac > out[j].Frac })
	return out
}
