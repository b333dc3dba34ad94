package main

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/device"
)

// cpuProfile summarises a pprof CPU profile of the in-process run by its labels: the
// cores of the appliance (and of each device step within it), of the benchmark's
// client, and of the rest (GC, runtime and whatever carries no label).
type cpuProfile struct {
	File    string             `json:"file"`
	TopFile string             `json:"top_file"`
	Cores   float64            `json:"cores"`
	Parts   map[string]float64 `json:"cores_by_part"`
	Steps   map[string]float64 `json:"cores_by_step"`
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

var (
	totalSamples = regexp.MustCompile(`Total samples = (\S+)`)
	tagKey       = regexp.MustCompile(`^\s*(\S+): Total`)
	tagValue     = regexp.MustCompile(`^\s*(\S+) \(\s*[\d.]+%\): (\S+)`)
)

// analyseCPU writes `go tool pprof -top` next to the profile for people, and reads
// the CPU time per label value from `go tool pprof -tags`.
func analyseCPU(path string, window time.Duration) (cpuProfile, error) {
	p := cpuProfile{File: path, TopFile: strings.TrimSuffix(path, ".pprof") + ".top.txt", Parts: map[string]float64{}, Steps: map[string]float64{}}
	top, err := exec.Command(goTool(), "tool", "pprof", "-top", "-nodecount=30", path).CombinedOutput()
	if err != nil {
		return p, fmt.Errorf("go tool pprof -top: %v: %s", err, top)
	}
	if err := os.WriteFile(p.TopFile, top, 0o644); err != nil {
		return p, err
	}
	secs := window.Seconds()
	if m := totalSamples.FindSubmatch(top); m != nil {
		d, _ := time.ParseDuration(string(m[1]))
		p.Cores = d.Seconds() / secs
	}
	tags, err := exec.Command(goTool(), "tool", "pprof", "-tags", path).Output()
	if err != nil {
		return p, fmt.Errorf("go tool pprof -tags: %v", err)
	}
	into := map[string]map[string]float64{labelKey: p.Parts, device.StepLabel: p.Steps}
	var cur map[string]float64
	for _, line := range strings.Split(string(tags), "\n") {
		if m := tagKey.FindStringSubmatch(line); m != nil {
			cur = into[m[1]]
		} else if m := tagValue.FindStringSubmatch(line); m != nil && cur != nil {
			d, _ := time.ParseDuration(m[1])
			cur[m[2]] = d.Seconds() / secs
		}
	}
	p.Parts["unlabelled (GC, runtime)"] = max(0, p.Cores-p.Parts[labelAppliance]-p.Parts[labelClient])
	return p, nil
}

func goTool() string {
	if g, err := exec.LookPath("go"); err == nil {
		return g
	}
	return "go"
}
