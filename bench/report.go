package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Row is one line of the results: a measurement, and when the issue sets a target
// for it, the verdict and (for a miss) the reason the profile gave.
type Row struct {
	Section  string             `json:"section"`
	Name     string             `json:"name"`
	Kind     string             `json:"kind,omitempty"`
	KeyType  string             `json:"key_type,omitempty"`
	InFlight int                `json:"in_flight,omitempty"`
	Value    *float64           `json:"value"`
	Unit     string             `json:"unit"`
	Metrics  map[string]float64 `json:"metrics,omitempty"`
	Target   string             `json:"target,omitempty"`
	Status   string             `json:"status,omitempty"` // PASS, FAIL, NOT BUILT, ERROR; empty without a target
	Reason   string             `json:"reason,omitempty"` // why a target was missed, from the profile
	Note     string             `json:"note,omitempty"`
	Profile  any                `json:"profile,omitempty"`
}

const (
	statusPass     = "PASS"
	statusFail     = "FAIL"
	statusNotBuilt = "NOT BUILT"
	statusError    = "ERROR"
)

func val(v float64) *float64 { return &v }

func verdict(ok bool) string {
	if ok {
		return statusPass
	}
	return statusFail
}

const (
	secRaw       = "raw"
	secAppliance = "appliance"
	secPeer      = "peer"
	secDaemon    = "daemon"
	secSize      = "size"
	secStepCA    = "stepca"
	secScale     = "scale"
)

var sectionTitles = map[string]string{
	secRaw:       "1. Raw token speed: one PKCS#11 session, C_Sign from Go (hsm/pkcs11 Signer), SoftHSM2",
	secAppliance: "2. Through the appliance: `sign` over mosquitto on loopback (QoS 1, set_tcp_nodelay true)",
	secPeer:      "3. The original IoT-HSM's way as a peer: one `openssl` process per certificate, PKCS#11 engine, same token",
	secDaemon:    "4. The daemon: `bin/iot-hsm run --config` as a child process",
	secSize:      "5. Binary size (stripped)",
	secStepCA:    "6. smallstep step-ca as a peer: HTTPS `/1.0/sign`, JWK one-time tokens, its intermediate key in SoftHSM2 (PKCS#11)",
	secScale:     "7. Scale-out: one CA key on more tokens, and on more appliances (a fleet on its CA topic)",
}

type results struct {
	Machine  machine  `json:"machine"`
	Duration string   `json:"duration"`
	Summary  string   `json:"summary"`
	Rows     []Row    `json:"rows"`
	Notes    []string `json:"notes"`
	// Before is this run against an earlier one, when bench ran with -before.
	Before *comparison `json:"before,omitempty"`
}

func writeResults(dir string, r results) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "RESULTS.md"), []byte(markdown(r)), 0o644)
}

func summary(rows []Row) string {
	n := map[string]int{}
	for _, r := range rows {
		if r.Status != "" {
			n[r.Status]++
		}
	}
	var parts []string
	for _, st := range []string{statusPass, statusFail, statusNotBuilt, statusError} {
		if n[st] > 0 || st == statusPass || st == statusFail {
			parts = append(parts, fmt.Sprintf("%d %s", n[st], st))
		}
	}
	return strings.Join(parts, ", ")
}

func markdown(r results) string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "# Benchmarks\n\n")
	fmt.Fprintf(&b, "Written by `make bench` (the program in `bench/`); the next run overwrites it. ")
	fmt.Fprintf(&b, "Every figure comes from the same run on the same machine, so they compare as ratios.\n\n")
	fmt.Fprintf(&b, "| machine | |\n|---|---|\n")
	fmt.Fprintf(&b, "| CPU | %s |\n| cores | %d |\n| memory | %.1f GiB |\n", m.CPU, m.Cores, float64(m.MemKiB)/(1<<20))
	fmt.Fprintf(&b, "| OS, kernel | %s, %s |\n| Go | %s |\n", m.OS, m.Kernel, m.Go)
	var pk []string
	for _, p := range []string{"softhsm2", "mosquitto", "openssl", "libengine-pkcs11-openssl"} {
		if v := m.Packages[p]; v != "" {
			pk = append(pk, p+" "+v)
		}
	}
	fmt.Fprintf(&b, "| packages | %s |\n", strings.Join(pk, ", "))
	fmt.Fprintf(&b, "| state directory | %s |\n| date | %s |\n| run time | %s |\n", m.StateFS, m.Date, r.Duration)
	fmt.Fprintf(&b, "| other processes at start | %.2f cores (after waiting %s for them to calm down) |\n\n", m.OthersAtStart, m.QuietWait)
	fmt.Fprintf(&b, "**Targets: %s.**\n\n", r.Summary)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n")
	}
	for _, sec := range []string{secRaw, secAppliance, secPeer, secDaemon, secSize, secStepCA, secScale} {
		var rows []Row
		for _, row := range r.Rows {
			if row.Section == sec {
				rows = append(rows, row)
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(&b, "## %s\n\n", sectionTitles[sec])
		switch sec {
		case secRaw:
			b.WriteString("| key | signatures/s | per signature, p50 | CPU of other processes meanwhile |\n|---|--:|--:|--:|\n")
			for _, row := range rows {
				if row.Status == statusError {
					fmt.Fprintf(&b, "| %s | ERROR: %s | | |\n", orDash(row.KeyType), cell(row.Reason))
					continue
				}
				fmt.Fprintf(&b, "| %s | %s | %.3f ms | %.2f cores |\n", row.KeyType, num(row.Value), row.Metrics["p50_ms"], row.Metrics["cpu_others_cores"])
			}
		case secAppliance:
			b.WriteString("| kind | key | in flight | requests/s | p50 | p99 | of raw speed | CPU cores: this process + mosquitto + others | target | result | reason (profile) |\n")
			b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|---|---|---|\n")
			for _, row := range rows {
				if row.Value == nil {
					fmt.Fprintf(&b, "| %s | %s | %d | | | | | | %s | %s | %s |\n", row.Kind, row.KeyType, row.InFlight, cell(row.Target), row.Status, cell(row.Reason))
					continue
				}
				mt := row.Metrics
				fmt.Fprintf(&b, "| %s | %s | %d | %s | %.2f ms | %.2f ms | %.0f%% | %.2f + %.2f + %.2f | %s | %s | %s |\n",
					row.Kind, row.KeyType, row.InFlight, num(row.Value), mt["p50_ms"], mt["p99_ms"], 100*mt["ratio_to_raw"],
					mt["cpu_self_cores"], mt["cpu_broker_cores"], mt["cpu_others_cores"], orDash(cell(row.Target)), orDash(row.Status), cell(joinNote(row)))
			}
		case secStepCA:
			stepCATable(&b, rows)
		default:
			b.WriteString("| row | value | unit | target | result | reason or note |\n|---|--:|---|---|---|---|\n")
			for _, row := range rows {
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", cell(row.Name), num(row.Value), row.Unit,
					orDash(cell(row.Target)), orDash(row.Status), cell(joinNote(row)))
			}
		}
		b.WriteString("\n")
	}
	if r.Before != nil {
		r.Before.markdown(&b)
	}
	return b.String()
}

// stepCATable writes the servers side by side, then the ratios with their targets.
func stepCATable(b *strings.Builder, rows []Row) {
	b.WriteString("| server | in flight | certificates/s | p50 | p99 | CPU, memory |\n|---|--:|--:|--:|--:|---|\n")
	var rest []Row
	for _, row := range rows {
		if row.Unit != "certificates/s" {
			rest = append(rest, row)
			continue
		}
		mt := row.Metrics
		fmt.Fprintf(b, "| %s | %d | %s | %.2f ms | %.2f ms | %s |\n", row.Kind, row.InFlight, num(row.Value), mt["p50_ms"], mt["p99_ms"], cell(row.Note))
	}
	b.WriteString("\n| row | value | unit | target | result | reason or note |\n|---|--:|---|---|---|---|\n")
	for _, row := range rest {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", cell(row.Name), num(row.Value), row.Unit,
			orDash(cell(row.Target)), orDash(row.Status), cell(joinNote(row)))
	}
}

func joinNote(r Row) string {
	switch {
	case r.Reason != "" && r.Note != "":
		return r.Reason + " — " + r.Note
	case r.Reason != "":
		return r.Reason
	}
	return r.Note
}

func num(v *float64) string {
	if v == nil {
		return ""
	}
	switch x := *v; {
	case x >= 100:
		return fmt.Sprintf("%.0f", x)
	case x >= 10:
		return fmt.Sprintf("%.1f", x)
	default:
		return fmt.Sprintf("%.2f", x)
	}
}

func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func fmtDuration(d time.Duration) string { return d.Round(time.Second).String() }
