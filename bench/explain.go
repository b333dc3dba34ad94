package main

import (
	"fmt"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// Worker categories of the sampler (sampler.go) named here too.
const (
	catSign    = "C_Sign in SoftHSM2"
	catPKCS11  = "other PKCS#11 calls"
	catPublish = "reply publish (waiting for PUBACK)"
)

// explainLoad turns the profiles of a re-run into the reason written next to a
// missed target: where the token's worker spent each request (timed, or measured
// alone in this run), whether the MQTT dispatch waited, and what the CPU went to.
// The stack sampler supplies the file:line of each step and the dispatch's waits.
func explainLoad(s appSpec, raw rawResult, costs aloneCosts, r loadResult, wall wallProfile, cpu cpuProfile, outDir string) string {
	if r.Completed == 0 || wall.Samples == 0 {
		return "the profiled re-run produced no samples"
	}
	locOf := func(names ...string) string {
		for _, n := range names {
			for _, sh := range wall.Worker {
				if sh.Name == n && sh.Loc != "" {
					return sh.Loc
				}
			}
		}
		return ""
	}
	type part struct {
		text string
		ms   float64
		loc  string
	}
	cacheLoc := locOf("reply-cache fsync (bbolt)", "reply-cache write (bbolt)")
	parts := []part{
		{"signing", r.SignMs, locOf(catSign)},
		{"reply publish and PUBACK wait", r.PublishMs, locOf(catPublish)},
	}
	if s.kind == "digest" {
		parts = append(parts, part{"verifying the signature again in Go", costs.VerifyMs[s.kt], locOf("verification in Go")})
	} else {
		parts = append(parts, part{"building and checking the certificate in Go", costs.IssueMs, locOf("crypto/x509 build and parse", "verification in Go")})
	}
	known := 0.0
	for _, p := range parts {
		known += p.ms
	}
	perReq := ms(s.window) / float64(r.Completed)
	idle := 0.0
	for _, sh := range wall.Worker {
		if strings.HasPrefix(sh.Name, "idle") {
			idle = sh.Frac
		}
	}
	cores := float64(runtime.NumCPU())
	used := cpu.Cores + r.CPUBroker

	var lead string
	saturated := s.inflight > 1 && idle < 0.15
	checks := "a re-verification"
	if s.kind != "digest" {
		checks = "the certificate checks"
	}
	total, over := r.MeanMs, "mean"
	switch {
	case s.inflight == 1:
		lead = fmt.Sprintf("p50 %.2f ms = token %.2f ms + %.2f ms added: each request waits for a reply-cache fsync, %s and a PUBACK besides its signature",
			r.P50, raw.P50, r.P50-raw.P50, checks)
		parts = append(parts, part{"reply-cache write with fsync (measured alone)", costs.ReplyCacheMs, cacheLoc})
		parts = append(parts, part{"MQTT hops and the rest", max(0, r.MeanMs-known-costs.ReplyCacheMs), ""})
	case saturated:
		lead = fmt.Sprintf("the token's one worker does every step of a request in turn and signs only %.0f%% of its time: %.2f ms per request against %.2f ms per raw signature",
			100*r.SignMs/perReq, perReq, 1000/raw.Rate)
		// What is left of the worker's time is mostly the reply-cache write; the
		// same write measured alone just before says how much.
		loc := fmt.Sprintf("store.PutReply alone %.2f ms", costs.ReplyCacheMs)
		if cacheLoc != "" {
			loc = cacheLoc + "; " + loc
		}
		parts = append(parts, part{"reply-cache write with fsync, and the rest", max(0, perReq-known), loc})
		total, over = perReq, "worker time"
	case used >= 0.85*cores:
		lead = fmt.Sprintf("CPU-bound: %.2f of %.0f cores busy while the worker idles %.0f%%", used, cores, 100*idle)
	default:
		lead = fmt.Sprintf("the worker idles %.0f%% with %.2f of %.0f cores busy: requests reach it too slowly", 100*idle, used, cores)
	}
	sort.SliceStable(parts, func(i, j int) bool { return parts[i].ms > parts[j].ms })
	var ps []string
	for _, p := range parts {
		t := fmt.Sprintf("%s %.2f ms", p.text, p.ms)
		if p.loc != "" {
			t += " (" + p.loc + ")"
		}
		ps = append(ps, t)
	}
	out := []string{lead, fmt.Sprintf("per request (%s %.2f ms): %s", over, total, strings.Join(ps, ", "))}
	for _, sh := range wall.Handle {
		if strings.HasPrefix(sh.Name, "waiting for the token mutex") && sh.Frac >= 0.05 {
			out = append(out, fmt.Sprintf("MQTT dispatch waited %.0f%% of the time for the token mutex held during C_Sign (%s)", 100*sh.Frac, sh.Loc))
		}
	}
	var cats []string
	for i, sh := range cpu.Appliance {
		if i == 3 {
			break
		}
		cats = append(cats, fmt.Sprintf("%s %.0f%%", sh.Name, 100*sh.Frac))
	}
	out = append(out, fmt.Sprintf("CPU %.2f of %.0f cores: appliance %.2f (%s), GC and runtime %.2f, bench client %.2f, mosquitto %.2f, other processes %.2f",
		used, cores, cpu.Parts[labelAppliance], strings.Join(cats, ", "), cpu.Parts["runtime (unlabelled)"], cpu.Parts[labelClient], r.CPUBroker, r.CPUOthers))
	top, _ := filepath.Rel(outDir, cpu.TopFile)
	out = append(out, fmt.Sprintf("profile %s (re-run %.0f/s)", top, r.Rate))
	return strings.Join(out, "; ")
}
