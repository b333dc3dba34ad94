package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime/pprof"
	"sort"
	"strings"
	"time"
)

// cpuProfile summarises a pprof CPU profile of the in-process run: how much of the
// machine the process used, split between the appliance and the benchmark's client
// (by pprof label), and what the appliance's CPU went to.
type cpuProfile struct {
	File      string             `json:"file"`
	TopFile   string             `json:"top_file"`
	Cores     float64            `json:"cores"`
	Parts     map[string]float64 `json:"cores_by_part"`
	Appliance []share            `json:"appliance"`
}

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

var cpuRules = []struct {
	name string
	pred func(string) bool
}{
	{"bench sampler", fnPrefix("main.(*wallSampler)")},
	{"SoftHSM2 (cgo)", fnPrefix("github.com/miekg/pkcs11.")},
	{"bbolt", fnPrefix("go.etcd.io/bbolt.")},
	{"Go verify", isVerify},
	{"crypto/x509", fnPrefix("crypto/x509.")},
	{"JSON", fnPrefix("encoding/json.")},
	{"paho MQTT", fnPrefix("github.com/eclipse/paho")},
	{"GC", fnPrefix("runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge")},
	{"scheduler", fnPrefix("runtime.schedule", "runtime.findRunnable", "runtime.mcall", "runtime.park_m")},
}

func cpuCategory(stack []string) string {
	for _, r := range cpuRules {
		for _, fn := range stack {
			if r.pred(fn) {
				return r.name
			}
		}
	}
	if len(stack) > 0 {
		return "other"
	}
	return "unknown"
}

// analyseCPU reads the profile with `go tool pprof -traces` (one block per distinct
// stack, with its labels and CPU time) and writes `-top` next to it for people.
func analyseCPU(path string, window time.Duration) (cpuProfile, error) {
	p := cpuProfile{File: path, TopFile: strings.TrimSuffix(path, ".pprof") + ".top.txt", Parts: map[string]float64{}}
	top, err := exec.Command(goTool(), "tool", "pprof", "-top", "-nodecount=30", path).CombinedOutput()
	if err != nil {
		return p, fmt.Errorf("go tool pprof -top: %v: %s", err, top)
	}
	if err := os.WriteFile(p.TopFile, top, 0o644); err != nil {
		return p, err
	}
	out, err := exec.Command(goTool(), "tool", "pprof", "-traces", path).Output()
	if err != nil {
		return p, fmt.Errorf("go tool pprof -traces: %v", err)
	}
	var total float64
	app := map[string]float64{}
	flush := func(part string, val float64, stack []string) {
		if val == 0 {
			return
		}
		total += val
		if part == "" {
			part = "runtime (unlabelled)"
		}
		p.Parts[part] += val
		if part == labelAppliance {
			app[cpuCategory(stack)] += val
		}
	}
	var part string
	var val float64
	var stack []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-----------+") {
			flush(part, val, stack)
			part, val, stack = "", 0, nil
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if f[0] == labelKey+":" && len(f) > 1 {
			part = f[1]
			continue
		}
		if d, err := time.ParseDuration(f[0]); err == nil && len(f) > 1 && stack == nil {
			val = d.Seconds()
			stack = append(stack, f[1])
			continue
		}
		if stack != nil && len(f) == 1 {
			stack = append(stack, f[0])
		}
	}
	flush(part, val, stack)
	secs := window.Seconds()
	p.Cores = total / secs
	for k, v := range p.Parts {
		p.Parts[k] = v / secs
	}
	appTotal := 0.0
	for _, v := range app {
		appTotal += v
	}
	for name, v := range app {
		p.Appliance = append(p.Appliance, share{Name: name, Frac: v / appTotal})
	}
	sort.Slice(p.Appliance, func(i, j int) bool { return p.Appliance[i].Frac > p.Appliance[j].Frac })
	return p, nil
}

func goTool() string {
	if g, err := exec.LookPath("go"); err == nil {
		return g
	}
	return "go"
}
