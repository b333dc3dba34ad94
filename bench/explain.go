package main

import (
	"fmt"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/protocol"
)

type explained struct {
	reason  string
	profile any
}

type loadProfile struct {
	Rate  float64            `json:"profiled_per_second"`
	P50   float64            `json:"profiled_p50_ms"`
	Steps map[string]float64 `json:"step_ms_per_request"`
	CPU   cpuProfile         `json:"cpu"`
}

// explainLoad re-runs a configuration that missed its target under the CPU profiler
// (once per configuration) and returns the reason written next to it.
func (b *bench) explainLoad(o *operator, s appSpec, raw rawResult) (string, any) {
	if _, ok := b.explained[s.name()]; ok {
		return fmt.Sprintf("profiled as %s: see that reason above", s.name()), nil
	}
	progress("profiling %s", s.name())
	path := filepath.Join(b.profDir, s.file()+".cpu.pprof")
	ls := s.loadSpec
	var cpuErr error
	ls.onWindow = func() func() {
		stop, err := startCPUProfile(path)
		if cpuErr = err; err != nil {
			return func() {}
		}
		return stop
	}
	r, err := runLoad(o, ls)
	if err == nil {
		err = cpuErr
	}
	var cpu cpuProfile
	if err == nil {
		cpu, err = analyseCPU(path, s.window)
	}
	if err != nil {
		return "profiling failed: " + err.Error(), nil
	}
	e := explained{reason(s, raw, r, cpu, b.out), loadProfile{Rate: r.Rate, P50: r.P50, Steps: r.Steps, CPU: cpu}}
	b.explained[s.name()] = e
	return e.reason, e.profile
}

// reason splits a request's time by the device's step trace: the worker runs each
// request on the token (run, with the token's signature inside), the finisher then
// verifies, records and publishes a batch while the worker runs the next.
func reason(s appSpec, raw rawResult, r loadResult, cpu cpuProfile, outDir string) string {
	st := r.Steps
	perReq := ms(s.window) / float64(r.Completed)
	worker := st[device.StepRun] / perReq
	finisher := (st[device.StepVerify] + st[device.StepRecord] + st[device.StepPublish]) / perReq
	cores := float64(runtime.NumCPU())
	used := cpu.Cores + r.CPUBroker
	var lead string
	switch {
	case s.inflight == 1:
		lead = fmt.Sprintf("p50 %.2f ms = token %.2f ms + %.2f ms added: each request goes through every step in turn", r.P50, raw.P50, r.P50-raw.P50)
	case worker >= 0.85:
		lead = fmt.Sprintf("the token's one worker is busy %.0f%% of the time and a signature takes %.2f ms there against %.2f ms alone: "+
			"the token shares the cores with the other steps", 100*worker, st[device.StepSign], 1000/raw.Rate)
	case finisher >= 0.85:
		lead = fmt.Sprintf("the finisher (verify, record, publish) is busy %.0f%% of the time: it, not the token (busy %.0f%%), is the limit", 100*finisher, 100*worker)
	case used >= 0.85*cores:
		lead = fmt.Sprintf("CPU-bound: %.2f of %.0f cores busy while the token's worker is busy %.0f%%", used, cores, 100*worker)
	default:
		lead = fmt.Sprintf("requests reach the token too slowly: its worker is busy %.0f%% with %.2f of %.0f cores in use", 100*worker, used, cores)
	}
	goWork := "the rest of the run (JSON)"
	if s.kind == protocol.KindCertificate {
		goWork = "building and checking the certificate in Go"
	}
	type part struct {
		text string
		ms   float64
	}
	parts := []part{
		{"the token's signature", st[device.StepSign]},
		{goWork, max(0, st[device.StepRun]-st[device.StepSign])},
		{"verifying the signature again in Go", st[device.StepVerify]},
		{fmt.Sprintf("audit trail and reply cache with their sync (batches of %.1f)", float64(r.Completed)/float64(max(1, r.StepCalls[device.StepRecord]))), st[device.StepRecord]},
		{"reply publish and PUBACK wait", st[device.StepPublish]},
	}
	known := 0.0
	for _, p := range parts {
		known += p.ms
	}
	total, over := r.MeanMs, "mean"
	if s.inflight == 1 {
		parts = append(parts, part{"MQTT hops, dispatch and the client", max(0, r.MeanMs-known)})
	} else {
		total, over = perReq, "one request every"
	}
	sort.SliceStable(parts, func(i, j int) bool { return parts[i].ms > parts[j].ms })
	var ps []string
	for _, p := range parts {
		ps = append(ps, fmt.Sprintf("%s %.2f ms", p.text, p.ms))
	}
	var steps []string
	for _, k := range []string{device.StepRun, device.StepVerify, device.StepRecord, device.StepPublish} {
		steps = append(steps, fmt.Sprintf("%s %.2f", k, cpu.Steps[k]))
	}
	app := cpu.Parts[labelAppliance]
	for _, k := range []string{device.StepRun, device.StepVerify, device.StepRecord, device.StepPublish} {
		app -= cpu.Steps[k]
	}
	top, _ := filepath.Rel(outDir, cpu.TopFile)
	return strings.Join([]string{lead,
		fmt.Sprintf("per request (%s %.2f ms; worker busy %.0f%%, finisher %.0f%%): %s", over, total, 100*worker, 100*finisher, strings.Join(ps, ", ")),
		fmt.Sprintf("CPU %.2f of %.0f cores: appliance %.2f (%s, MQTT and dispatch %.2f), bench client %.2f, GC and runtime %.2f, mosquitto %.2f, other processes %.2f",
			used, cores, cpu.Parts[labelAppliance], strings.Join(steps, ", "), max(0, app), cpu.Parts[labelClient], cpu.Parts["unlabelled (GC, runtime)"], r.CPUBroker, r.CPUOthers),
		fmt.Sprintf("profile %s (re-run %.0f/s)", top, r.Rate),
	}, "; ")
}
