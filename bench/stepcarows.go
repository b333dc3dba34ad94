package main

import (
	"fmt"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// stepCARows measures step-ca issuing the same CSR at 1, 8 and 64 in flight, a fresh
// process each time, and the appliance's certificate configuration again just before
// each: other work on a shared machine changes over a run, and the ratio should
// compare the two under the same conditions.
func (b *bench) stepCARows(s *stepCA, csr string, specs []appSpec, o *operator) {
	for i, n := range inFlights {
		spec := certSpec(specs, n)
		if spec == nil {
			continue
		}
		ours, err := runLoad(o, spec.loadSpec)
		if err != nil {
			b.fail(secStepCA, fmt.Sprintf("iot-hsm, %d in flight", n), err)
			continue
		}
		name := fmt.Sprintf("step-ca, %d in flight", n)
		res, peak, err := b.stepCAOnce(s, csr, i, n)
		if err != nil {
			b.fail(secStepCA, name, err)
			continue
		}
		progress("%s: %.0f certificates/s, p50 %.2f ms, p99 %.2f ms, peak RSS %.0f MiB; iot-hsm just before: %.0f/s, p50 %.2f ms",
			name, res.Rate, res.P50, res.P99, kib(peak.VmRSS), ours.Rate, ours.P50)
		b.rows = append(b.rows, stepRow(name, "step-ca", res, peak),
			stepRow(fmt.Sprintf("iot-hsm, %d in flight", n), "iot-hsm", ours, procStatus{}))
		x := ours.Rate / res.Rate
		row := Row{Section: secStepCA, Name: fmt.Sprintf("iot-hsm vs step-ca, certificates/s at %d in flight", n), InFlight: n,
			Value: val(x), Unit: "×", Target: "> 1× (ahead)", Status: verdict(x > 1),
			Note: fmt.Sprintf("ours %.0f/s (p50 %.2f ms) vs step-ca %.0f/s (p50 %.2f ms), measured one after the other; both reply only after a durable write",
				ours.Rate, ours.P50, res.Rate, res.P50)}
		if x <= 1 {
			row.Reason, row.Profile = b.explainLoad(o, *spec, b.raw[spec.kt])
		}
		b.rows = append(b.rows, row)
	}
}

// stepCAOnce starts step-ca afresh (its i-th start) and measures n in flight.
func (b *bench) stepCAOnce(s *stepCA, csr string, i, n int) (loadResult, procStatus, error) {
	const cn = "node.example.com"
	r, err := s.start(i)
	if err != nil {
		return loadResult{}, procStatus{}, err
	}
	defer r.stop()
	// Enough for twice the rate measured on this kind of machine.
	bodies, err := s.bodies(r.url, csr, cn, int(3000*(b.warmup+b.window).Seconds())+n)
	if err != nil {
		return loadResult{}, procStatus{}, err
	}
	return s.stepLoad(r, bodies, cn, n, b.warmup, b.window)
}

// certSpec is the appliance's certificate configuration at n in flight.
func certSpec(specs []appSpec, n int) *appSpec {
	for i, s := range specs {
		if s.kind == protocol.KindCertificate && s.inflight == n {
			return &specs[i]
		}
	}
	return nil
}

// stepRow is one measured server in the step-ca section. For step-ca the CPU is the
// server, the client (this process) and the rest; for ours this process (appliance
// and client), mosquitto and the rest.
func stepRow(name, server string, r loadResult, peak procStatus) Row {
	row := Row{Section: secStepCA, Name: name, Kind: server, InFlight: r.InFlight, Value: val(r.Rate), Unit: "certificates/s",
		Metrics: map[string]float64{"p50_ms": r.P50, "p99_ms": r.P99, "mean_ms": r.MeanMs, "completed": float64(r.Completed),
			"errors": float64(r.Errors), "cpu_self_cores": r.CPUSelf, "cpu_other_cores": r.CPUBroker, "cpu_rest_cores": r.CPUOthers}}
	if server == "step-ca" {
		row.Metrics["peak_rss_mib"], row.Metrics["peak_rss_anon_mib"] = kib(peak.VmRSS), kib(peak.RssAnon)
		row.Note = fmt.Sprintf("CPU: step-ca %.2f + client %.2f + others %.2f cores; peak RSS %.1f MiB (anonymous %.1f)",
			r.CPUBroker, r.CPUSelf, r.CPUOthers, kib(peak.VmRSS), kib(peak.RssAnon))
	} else {
		row.Note = fmt.Sprintf("CPU: appliance and client %.2f + mosquitto %.2f + others %.2f cores; memory: the daemon's row below",
			r.CPUSelf, r.CPUBroker, r.CPUOthers)
	}
	if r.Errors > 0 {
		row.Note += fmt.Sprintf("; %d errors, first: %s", r.Errors, r.FirstErr)
	}
	return row
}

// stepMemoryRow compares the daemon's memory under load (section 4) with step-ca's
// at 64 in flight; it runs once both are measured.
func (b *bench) stepMemoryRow() {
	var ours, theirs *Row
	for i, r := range b.rows {
		switch {
		case r.Section == secDaemon && r.Unit == "MiB" && r.Target != "" && r.Metrics["rss_anon_mib"] > 0 && ours == nil:
			ours = &b.rows[i]
		case r.Section == secStepCA && r.Kind == "step-ca" && r.InFlight == 64:
			theirs = &b.rows[i]
		}
	}
	if ours == nil || theirs == nil {
		return
	}
	b.rows = append(b.rows, Row{Section: secStepCA, Name: "resident memory under load, 64 in flight: iot-hsm daemon vs step-ca",
		Value: val(*ours.Value / theirs.Metrics["peak_rss_mib"]), Unit: "×",
		Note: fmt.Sprintf("daemon %.1f MiB (anonymous %.1f) vs step-ca %.1f MiB (anonymous %.1f), peak VmRSS",
			*ours.Value, ours.Metrics["rss_anon_mib"], theirs.Metrics["peak_rss_mib"], theirs.Metrics["peak_rss_anon_mib"])})
}

// stepCANote says how the peer was set up, for the notes of RESULTS.md.
func stepCANote(window time.Duration) string {
	return fmt.Sprintf("step-ca %s (smallstep, go install): intermediate key P-256 in a SoftHSM2 token of its own through PKCS#11 "+
		"(kms type pkcs11), badger database (its default, durable), JWK provisioner; the client posts to /1.0/sign over HTTPS with "+
		"keep-alive, each request with a one-time token (ES256, unique jti) made ahead of time and the same CSR as ours; "+
		"a fresh step-ca process for each in-flight count, %s measured after a warm-up; the first certificate of each run verified with "+
		"crypto/x509 against the root.", stepCAVersion, window)
}
