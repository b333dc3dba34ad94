// Command bench measures the appliance against the limit of the token behind it: raw
// signing speed of SoftHSM2, the same signatures through the appliance (built by
// internal/appliance, as `iot-hsm run` builds it) over a real mosquitto, the
// openssl-per-certificate way as a peer, and the daemon's memory, start-up time and
// binary size, all in one run on one machine. It writes RESULTS.md and results.json;
// targets are reported, never asserted, and a missed one is re-run under the CPU
// profiler so the table says why, from the device's step trace and pprof labels.
//
// Run it from the module root: make bench, or go run ./bench -bin bin/iot-hsm.
package main

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/internal/mosquitto"
	"github.com/iot-hsm/iot-hsm/internal/softhsm"
	"github.com/iot-hsm/iot-hsm/protocol"
)

type options struct {
	root, bin, out string
	stepCA         string
	before, label  string
	window, warmup time.Duration
	quietWait      time.Duration
	keep           bool
	only           string
}

func main() {
	var c options
	flag.StringVar(&c.bin, "bin", "bin/iot-hsm", "the daemon binary (make build)")
	flag.StringVar(&c.stepCA, "step-ca", "bin/step-ca-"+stepCAVersion+"/step-ca", "step-ca, the peer of section 6 (make bench installs it)")
	flag.StringVar(&c.before, "before", "", "an earlier results.json to compare with in a closing section")
	flag.StringVar(&c.label, "before-label", "the earlier run", "what the -before run was")
	flag.StringVar(&c.out, "out", "bench", "where RESULTS.md, results.json and profiles/ go")
	flag.DurationVar(&c.window, "window", 4*time.Second, "measured time per configuration")
	flag.DurationVar(&c.warmup, "warmup", 500*time.Millisecond, "unmeasured time before each window")
	flag.DurationVar(&c.quietWait, "quiet-wait", 2*time.Minute, "longest wait for other processes to calm down before measuring")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory (tokens, state, logs)")
	flag.StringVar(&c.only, "only", "", `"scale": only the scale-out rows (give -out another directory: RESULTS.md is written whole)`)
	flag.Parse()
	// The product logs through slog; at info it would drown the progress lines.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// The key types of the rows, and the slot each is generated in.
var keySlots = []struct {
	kt   hsm.KeyType
	slot string
}{{hsm.P256, "01"}, {hsm.P384, "02"}, {hsm.RSA2048, "03"}, {hsm.RSA4096, "04"}}

var inFlights = []int{1, 8, 64}

type bench struct {
	options
	profDir, work string
	began         time.Time
	mos           *mosquitto.Broker
	rows          []Row
	notes         []string
	raw           map[hsm.KeyType]rawResult
	explained     map[string]explained // by configuration: each is profiled once
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func run(c options) error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return errors.New("run from the module root (make bench)")
	}
	c.root = root
	for _, p := range []*string{&c.bin, &c.out, &c.stepCA} {
		if !filepath.IsAbs(*p) {
			*p = filepath.Join(root, *p)
		}
	}
	if _, err := os.Stat(c.bin); err != nil {
		return fmt.Errorf("the daemon binary: %w (make build)", err)
	}
	b := &bench{options: c, began: time.Now(), raw: map[hsm.KeyType]rawResult{}, profDir: filepath.Join(c.out, "profiles"),
		explained: map[string]explained{}}
	// Profiles of an earlier run would be mistaken for this one's.
	if err := os.RemoveAll(b.profDir); err != nil {
		return err
	}
	if err := os.MkdirAll(b.profDir, 0o755); err != nil {
		return err
	}
	// On disk, not tmpfs, under the system's temporary directory: the reply cache
	// fsyncs there as it would in /var/lib/iot-hsm.
	if b.work, err = os.MkdirTemp("", "iot-hsm-bench-"); err != nil {
		return err
	}
	if !c.keep {
		defer os.RemoveAll(b.work)
	} else {
		progress("work directory kept: %s", b.work)
	}
	mach := describeMachine(b.work)
	progress("waiting up to %s for a quiet machine", c.quietWait)
	waited, others := waitQuiet(c.quietWait)
	mach.OthersAtStart, mach.QuietWait = others, waited.Round(time.Second).String()
	if others >= 0.33 {
		b.notes = append(b.notes, fmt.Sprintf("The machine did not calm down within %s: other processes used %.2f cores when the run began; "+
			"see the \"others\" CPU of each row.", c.quietWait, others))
	}
	// As docs/fleet.md asks of a fleet's broker: a member joining is sent every
	// unexpired claim at once, more than the default queue limit.
	if b.mos, err = mosquitto.Start(b.work, "max_queued_messages 0"); err != nil {
		return err
	}
	defer b.mos.Stop()

	b.notes = append(b.notes,
		"Client, mosquitto, the appliance and SoftHSM2 (in-process, through cgo) share the machine's cores; the CPU columns say who used them, including other processes.",
		"A missed target is re-run under the CPU profiler. Its reason splits a request's time by the device's step trace (device.Options.Trace): "+
			"on the token's worker the run of the request with the token's signature inside it; on the finisher, for a batch, verifying digest signatures "+
			"again, the audit trail and reply cache with their sync, and publishing until the PUBACKs. CPU shares come from the profile's pprof labels: "+
			"the device's step label, and one label each for the appliance and the bench client.")
	b.notes = append(b.notes, stepCANote(c.window))
	if c.only != "scale" {
		b.inProcess()
		b.daemonRows()
		b.stepMemoryRow()
		b.sizeRows()
	}
	b.scaleRows()

	res := results{Machine: mach, Duration: fmtDuration(time.Since(b.began)), Rows: b.rows, Summary: summary(b.rows), Notes: b.notes}
	if c.before != "" {
		if res.Before, err = compareWith(c.before, c.label, b.rows); err != nil {
			return fmt.Errorf("-before: %w", err)
		}
	}
	if err := writeResults(c.out, res); err != nil {
		return err
	}
	progress("done in %s: %s; wrote %s", res.Duration, res.Summary, filepath.Join(c.out, "RESULTS.md"))
	return nil
}

func (b *bench) fail(section, name string, err error) {
	progress("%s %s: %v", section, name, err)
	b.rows = append(b.rows, Row{Section: section, Name: name, Status: statusError, Reason: err.Error()})
}

// inProcess runs rows 1 to 3 on one SoftHSM2 token: raw speed, the appliance in
// this process (so it can be profiled), and the openssl peer; then step-ca as a
// peer on a token of its own (row 6).
func (b *bench) inProcess() {
	// Before the appliance's token: the peer's setup points SOFTHSM2_CONF at its own.
	sc, scErr := setupStepCA(b.stepCA, filepath.Join(b.work, "step-ca"))
	tok, err := softhsm.Create(filepath.Join(b.work, "token"), "bench")
	if err != nil {
		b.fail(secRaw, "token", err)
		return
	}
	// SoftHSM2 reads it in every C_Initialize, so it stays set for the process.
	os.Setenv("SOFTHSM2_CONF", tok.Conf)
	a, err := startAppliance(b.mos.URL, "bench-"+randomHex(3), b.work, tok)
	if err != nil {
		b.fail(secAppliance, "appliance", err)
		return
	}
	defer func() {
		if a.Stop() {
			a.Close()
		}
	}()
	o, err := newOperator(b.mos.URL)
	if err != nil {
		b.fail(secAppliance, "operator", err)
		return
	}
	defer o.close()
	toks := a.Registry.Tokens()
	if len(toks) == 0 {
		b.fail(secAppliance, "appliance", errors.New("the appliance lists no HSM"))
		return
	}
	htok, topics := toks[0], a.Device.Topics()
	cas := map[hsm.KeyType]provisionedCA{}
	for _, ks := range keySlots {
		t0 := time.Now()
		pc, err := provision(o, topics, htok.Info().ID, ks.slot, string(ks.kt), "Bench "+string(ks.kt)+" CA")
		if err != nil {
			b.fail(secAppliance, "provision "+string(ks.kt), err)
			return
		}
		cas[ks.kt] = pc
		progress("generated %s on SoftHSM2 and provisioned it in %s", ks.kt, time.Since(t0).Round(time.Millisecond))
	}
	for _, ks := range keySlots {
		r, err := rawSpeed(htok, ks.slot, ks.kt, b.warmup, b.window)
		if err != nil {
			b.fail(secRaw, string(ks.kt), err)
			continue
		}
		b.raw[ks.kt] = r
		progress("raw %s: %.0f signatures/s, p50 %.3f ms", ks.kt, r.Rate, r.P50)
		b.rows = append(b.rows, Row{Section: secRaw, Name: "raw " + string(ks.kt), KeyType: string(ks.kt),
			Value: val(r.Rate), Unit: "signatures/s", Metrics: map[string]float64{"p50_ms": r.P50, "signatures": float64(r.N), "cpu_others_cores": r.Others}})
	}
	csr, err := leafCSR("node.example.com")
	if err != nil {
		b.fail(secAppliance, "csr", err)
		return
	}
	specs := b.applianceSpecs(topics, cas, csr)
	results := map[string]loadResult{}
	for i := range specs {
		s := &specs[i]
		r, err := runLoad(o, s.loadSpec)
		if err != nil {
			b.fail(secAppliance, s.name(), err)
			continue
		}
		results[s.name()] = r
		progress("%s: %.0f/s, p50 %.2f ms, p99 %.2f ms, %.0f%% of raw", s.name(), r.Rate, r.P50, r.P99, 100*r.Rate/b.raw[s.kt].Rate)
	}
	b.applianceRows(specs, results, o)
	b.peerRows(tok, cas[hsm.P256], csr, specs, results, o)
	if scErr != nil {
		b.fail(secStepCA, "step-ca", scErr)
		return
	}
	b.stepCARows(sc, csr, specs, o)
}

// appSpec is one appliance configuration: a sign kind with one key at one load.
type appSpec struct {
	loadSpec
	kind string
	kt   hsm.KeyType
}

func (s appSpec) name() string { return fmt.Sprintf("%s %s, %d in flight", s.kind, s.kt, s.inflight) }

func (s appSpec) file() string { return fmt.Sprintf("%s-%s-%d", s.kind, s.kt, s.inflight) }

func (b *bench) applianceSpecs(topics protocol.Topics, cas map[hsm.KeyType]provisionedCA, csr string) []appSpec {
	var specs []appSpec
	add := func(kind string, kt hsm.KeyType, args protocol.SignArgs) {
		raw, _ := json.Marshal(args)
		for _, n := range inFlights {
			specs = append(specs, appSpec{kind: kind, kt: kt, loadSpec: loadSpec{
				topic: topics.CASign(cas[kt].CAID), args: raw, inflight: n,
				warmup: b.warmup, window: b.window, brokerPID: b.mos.PID(),
			}})
		}
	}
	for _, kt := range []hsm.KeyType{hsm.P256, hsm.P384, hsm.RSA2048} {
		h := hashFor(kt)
		digest := make([]byte, h.Size())
		_, _ = rand.Read(digest)
		name := "sha256"
		if h.Size() == 48 {
			name = "sha384"
		}
		add(protocol.KindDigest, kt, protocol.SignArgs{Kind: protocol.KindDigest, Digest: digest, Hash: name})
	}
	add(protocol.KindCertificate, hsm.P256, protocol.SignArgs{Kind: protocol.KindCertificate, CSR: csr,
		Profile: &protocol.Profile{Validity: "720h", KeyUsage: []string{"digital_signature"}, ExtKeyUsage: []string{"server_auth"}}})
	return specs
}

// applianceRows evaluates the targets, re-runs each missed configuration under the
// CPU profiler, and writes the rows with the reason next to them.
func (b *bench) applianceRows(specs []appSpec, results map[string]loadResult, o *operator) {
	maxApp, maxAll := 0, 0
	for _, s := range specs {
		r, ok := results[s.name()]
		if !ok {
			continue
		}
		raw := b.raw[s.kt]
		row := Row{Section: secAppliance, Name: s.name(), Kind: s.kind, KeyType: string(s.kt), InFlight: s.inflight,
			Value: val(r.Rate), Unit: "requests/s", Metrics: map[string]float64{
				"p50_ms": r.P50, "p99_ms": r.P99, "ratio_to_raw": r.Rate / raw.Rate, "cpu_self_cores": r.CPUSelf,
				"cpu_broker_cores": r.CPUBroker, "cpu_others_cores": r.CPUOthers, "mean_ms": r.MeanMs,
				"completed": float64(r.Completed), "errors": float64(r.Errors),
				"appliance_goroutines": float64(r.ApplianceGoroutines), "process_goroutines": float64(r.ProcessGoroutines),
			}}
		for step, v := range r.Steps {
			row.Metrics["step_"+step+"_ms_per_request"] = v
		}
		if r.Errors > 0 {
			row.Note = fmt.Sprintf("%d errors, first: %s", r.Errors, r.FirstErr)
		}
		if s.inflight == 64 {
			maxApp, maxAll = max(maxApp, r.ApplianceGoroutines), max(maxAll, r.ProcessGoroutines)
		}
		var pass bool
		switch {
		case s.kind == protocol.KindDigest && s.inflight == 1:
			limit := raw.P50 + 1
			row.Target = fmt.Sprintf("p50 ≤ token p50 + 1 ms = %.2f ms", limit)
			row.Metrics["added_p50_ms"] = r.P50 - raw.P50
			pass = r.P50 <= limit
		case s.kind == protocol.KindDigest && s.inflight >= 8 && (s.kt == hsm.RSA2048 || s.kt == hsm.P384):
			row.Target = "≥ 90% of raw"
			pass = r.Rate >= 0.9*raw.Rate
		default:
			b.rows = append(b.rows, row)
			continue
		}
		row.Status = verdict(pass)
		if !pass {
			row.Reason, row.Profile = b.explainLoad(o, s, raw)
		}
		b.rows = append(b.rows, row)
	}
	b.rows = append(b.rows, Row{Section: secDaemon, Name: "goroutines under load (in-process appliance, 64 in flight)",
		Value: val(float64(maxApp)), Unit: "goroutines",
		Note: fmt.Sprintf("the status document has no goroutine count and the daemon exposes none, so this is the appliance of row 2 "+
			"(goroutines carrying its pprof label, started by its device core and MQTT session); runtime.NumGoroutine of the whole "+
			"process, client included, was %d", maxAll)})
}

// peerRows measures openssl-per-certificate on the same token and key as the
// appliance's certificate rows, and compares.
func (b *bench) peerRows(tok *softhsm.Token, pc provisionedCA, csr string, specs []appSpec, results map[string]loadResult, o *operator) {
	dir := filepath.Join(b.work, "openssl")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.fail(secPeer, "openssl", err)
		return
	}
	p, err := opensslPeer(peerSetup{dir: dir, tokConf: tok.Conf, module: tok.Module, serial: tok.Serial, keyID: "01",
		pin: tok.PIN, caPEM: pc.CertPEM, csrPEM: csr, duration: max(b.window, 3*time.Second)})
	if err != nil {
		b.fail(secPeer, "openssl per certificate", err)
		return
	}
	progress("openssl peer: %.1f certificates/s one at a time (%.1f ms each), %.1f/s two at a time", p.Rate1, p.PerCert, p.Rate2)
	two := Row{Section: secPeer, Name: "openssl, two processes at a time (one per core)", Value: val(p.Rate2), Unit: "certificates/s",
		Metrics: map[string]float64{"certificates": float64(p.N2), "failed_runs": float64(p.Failed2)}}
	if p.Failed2 > 0 {
		two.Note = fmt.Sprintf("%d of %d runs failed: SoftHSM2 does not take two processes on one token well (first: %s)", p.Failed2, p.Failed2+p.N2, p.FirstFailure)
	}
	b.rows = append(b.rows,
		Row{Section: secPeer, Name: "openssl, one process per certificate, one at a time", Value: val(p.Rate1), Unit: "certificates/s",
			Metrics: map[string]float64{"ms_per_certificate": p.PerCert, "certificates": float64(p.N1), "failed_runs": float64(p.Failed1)},
			Note:    fmt.Sprintf("%.1f ms per certificate; `%s`; the first certificate verified with openssl verify", p.PerCert, p.Command), Profile: p},
		two)
	var one, best *appSpec
	for i, sp := range specs {
		r, ok := results[sp.name()]
		if sp.kind != protocol.KindCertificate || !ok {
			continue
		}
		if sp.inflight == 1 {
			one = &specs[i]
		}
		if best == nil || r.Rate > results[best.name()].Rate {
			best = &specs[i]
		}
	}
	add := func(name string, s *appSpec, peer float64, note string) {
		if s == nil {
			return
		}
		ours := results[s.name()].Rate
		x := ours / peer
		row := Row{Section: secPeer, Name: name, Value: val(x), Unit: "×", Target: "≥ 20×", Status: verdict(x >= 20),
			Note: fmt.Sprintf(note, ours, s.inflight, peer)}
		if x < 20 {
			row.Reason, row.Profile = b.explainLoad(o, *s, b.raw[s.kt])
		}
		b.rows = append(b.rows, row)
	}
	add("certificate issuance vs openssl, like for like (ours at 1 in flight, one openssl at a time)", one, p.Rate1,
		"ours %.0f certificates/s at %d in flight vs openssl %.1f/s")
	add("certificate issuance vs openssl, best against best", best, max(p.Rate1, p.Rate2),
		"ours %.0f certificates/s at %d in flight vs openssl %.1f/s")
}
