package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

const startTrials = 5

// daemonRows runs the real binary: memory idle and under load, and start-up time.
func (b *bench) daemonRows() {
	o, err := newOperator(b.mos.URL)
	if err != nil {
		b.fail(secDaemon, "operator", err)
		return
	}
	defer o.close()
	d, err := newDaemon(b.bin, b.work, b.mos.URL, o)
	if err != nil {
		b.fail(secDaemon, "daemon token", err)
		return
	}
	b.memoryRows(d)

	var online, ready []float64
	var phases []map[string]float64
	for i := range startTrials {
		s, err := d.start(fmt.Sprintf("bench-start-%d", i))
		if err != nil {
			b.fail(secDaemon, "start-up", err)
			return
		}
		online = append(online, ms(s.online))
		if s.ready > 0 {
			ready = append(ready, ms(s.ready))
		}
		phases = append(phases, logPhases(s))
		s.stop()
	}
	if len(ready) == 0 {
		b.fail(secDaemon, "start-up", fmt.Errorf("no READY=1 on NOTIFY_SOCKET in %d starts", startTrials))
		return
	}
	med, mr := median(online), median(ready)
	progress("daemon start to READY=1: median %.0f ms of %d; first online status %.0f ms", mr, len(ready), med)
	row := Row{Section: secDaemon, Name: fmt.Sprintf("start to READY=1 (NOTIFY_SOCKET), median of %d", startTrials), Value: val(mr), Unit: "ms",
		Metrics: map[string]float64{"min_ms": slices.Min(ready), "max_ms": slices.Max(ready), "first_online_median_ms": med},
		Target:  "≤ 300 ms", Status: verdict(mr <= 300), Profile: map[string]any{"log_phases_ms": phases, "online_ms": online},
		Note: fmt.Sprintf("first online status at %.0f ms; broker already up", med)}
	if len(ready) < startTrials {
		row.Note += fmt.Sprintf("; READY=1 arrived in %d of %d starts", len(ready), startTrials)
	}
	if mr > 300 {
		row.Reason = startReason(phases, online, med)
	}
	b.rows = append(b.rows, row)
}

func (b *bench) memoryRows(d *daemon) {
	const id = "bench-daemon"
	s, err := d.start(id)
	if err != nil {
		b.fail(secDaemon, "resident memory", err)
		return
	}
	defer s.stop()
	pid := s.cmd.Process.Pid
	atStart, _ := readStatus(pid)
	topics := protocol.Topics{Root: protocol.DefaultRoot, Device: id}
	hl, err := command[protocol.HSMListResult](d.o, topics, protocol.CmdHSMList, struct{}{})
	if err == nil && len(hl.HSMs) == 0 {
		err = fmt.Errorf("the daemon lists no HSM")
	}
	if err != nil {
		b.fail(secDaemon, "resident memory", err)
		return
	}
	pc, err := provision(d.o, topics, hl.HSMs[0].ID, "01", "p256", "Bench daemon CA")
	if err != nil {
		b.fail(secDaemon, "resident memory", err)
		return
	}
	time.Sleep(2 * time.Second)
	idle, err := readStatus(pid)
	if err != nil {
		b.fail(secDaemon, "resident memory", err)
		return
	}

	peakOf := samplePeak(pid)
	csr, err := leafCSR("node.example.com")
	if err != nil {
		b.fail(secDaemon, "resident memory", err)
		return
	}
	certArgs, _ := json.Marshal(protocol.SignArgs{Kind: protocol.KindCertificate, CSR: csr,
		Profile: &protocol.Profile{Validity: "720h", KeyUsage: []string{"digital_signature"}, ExtKeyUsage: []string{"server_auth"}}})
	digestArgs, _ := json.Marshal(protocol.SignArgs{Kind: protocol.KindDigest, Digest: make([]byte, 32), Hash: "sha256"})
	var rates []string
	for _, l := range []struct {
		name string
		args []byte
	}{{"certificates", certArgs}, {"digests", digestArgs}} {
		r, err := runLoad(d.o, loadSpec{topic: topics.CASign(pc.CAID), args: l.args, inflight: 64, warmup: b.warmup,
			window: b.window, brokerPID: b.mos.PID()})
		if err != nil {
			peakOf()
			b.fail(secDaemon, "resident memory under load", err)
			return
		}
		rates = append(rates, fmt.Sprintf("%.0f %s/s", r.Rate, l.name))
	}
	peak := peakOf()
	maps, _ := smapsByFile(pid)
	end, _ := readStatus(pid)
	progress("daemon RSS: %.1f MiB at start, %.1f MiB idle, %.1f MiB peak under load", kib(atStart.VmRSS), kib(idle.VmRSS), kib(peak.VmRSS))

	b.rows = append(b.rows, Row{Section: secDaemon, Name: "resident memory, idle (provisioned p256 CA, 2 s after provisioning)",
		Value: val(kib(idle.VmRSS)), Unit: "MiB", Profile: map[string]procStatus{"at_first_online": atStart, "idle": idle},
		Note: fmt.Sprintf("VmRSS; %.1f MiB right after the first online status; anonymous %.1f MiB, file-backed %.1f MiB",
			kib(atStart.VmRSS), kib(idle.RssAnon), kib(idle.RssFile))})
	row := Row{Section: secDaemon, Name: "resident memory under load (peak VmRSS, 64 in flight)", Value: val(kib(peak.VmRSS)), Unit: "MiB",
		Target: "≤ 30 MiB", Status: verdict(kib(peak.VmRSS) <= 30),
		Metrics: map[string]float64{"vm_hwm_mib": kib(end.VmHWM), "rss_anon_mib": kib(peak.RssAnon), "rss_file_mib": kib(peak.RssFile),
			"threads": float64(peak.Threads)},
		Profile: map[string]any{"peak": peak, "smaps_at_end": maps},
		Note: fmt.Sprintf("sampled every 50 ms during %s at 64 in flight (p256 CA); anonymous %.1f MiB, file-backed %.1f MiB, %d threads",
			strings.Join(rates, ", then "), kib(peak.RssAnon), kib(peak.RssFile), peak.Threads)}
	if !(kib(peak.VmRSS) <= 30) {
		row.Reason = b.memoryReason(peak, maps)
	}
	b.rows = append(b.rows, row, anonRow(peak, maps))
}

// anonRow is the memory the daemon allocates itself (Go heap, stacks, C malloc),
// which, unlike the file-backed pages of its binary, grows with load.
func anonRow(peak procStatus, maps []mapping) Row {
	row := Row{Section: secDaemon, Name: "anonymous memory under load (peak RssAnon, 64 in flight)", Value: val(kib(peak.PeakAnon)),
		Unit: "MiB", Target: "≤ 12 MiB", Status: verdict(kib(peak.PeakAnon) <= 12), Metrics: map[string]float64{"rss_anon_mib": kib(peak.PeakAnon)},
		Note: "sampled with the row above"}
	if kib(peak.PeakAnon) > 12 {
		for _, m := range maps {
			if (strings.HasPrefix(m.Name, "anonymous") || strings.HasPrefix(m.Name, "[")) && m.RSSKiB >= 100 {
				row.Reason += fmt.Sprintf("%s %.1f MiB at the end of the load; ", m.Name, kib(m.RSSKiB))
			}
		}
		row.Reason += "the Go heap grows with the requests in flight (their CSRs, certificates and replies) until the next GC"
	}
	return row
}

// samplePeak samples the process's memory every 50 ms until the function it returns
// is called, which returns the sample with the highest VmRSS.
func samplePeak(pid int) func() procStatus {
	var peak procStatus
	anon := 0
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			st, err := readStatus(pid)
			if err == nil && st.VmRSS > peak.VmRSS {
				peak = st
			}
			if err == nil {
				anon = max(anon, st.RssAnon)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() procStatus {
		close(stop)
		<-done
		peak.PeakAnon = anon
		return peak
	}
}

// memoryReason splits the daemon's resident memory by mapping.
func (b *bench) memoryReason(peak procStatus, maps []mapping) string {
	var top []string
	for i, m := range maps {
		if i == 4 {
			break
		}
		top = append(top, fmt.Sprintf("%s %.1f MiB", m.Name, kib(m.RSSKiB)))
	}
	out := fmt.Sprintf("peak %.1f MiB = anonymous %.1f + file-backed %.1f MiB; largest mappings at the end of the load: %s",
		kib(peak.VmRSS), kib(peak.RssAnon), kib(peak.RssFile), strings.Join(top, ", "))
	if fi, err := os.Stat(b.bin); err == nil {
		out += fmt.Sprintf(" (%s is %.1f MiB on disk: its code, read-only data and pclntab are paged in)", filepath.Base(b.bin), float64(fi.Size())/(1<<20))
	}
	return out
}

// startReason reads the start-up phases of the median start from the daemon's log.
func startReason(phases []map[string]float64, online []float64, med float64) string {
	i := 0
	for j, v := range online {
		if v == med {
			i = j
		}
	}
	type ph struct {
		name string
		at   float64
	}
	var ps []ph
	for k, v := range phases[i] {
		ps = append(ps, ph{k, v})
	}
	slices.SortFunc(ps, func(a, b ph) int { return int(a.at - b.at) })
	var parts []string
	for _, p := range ps {
		parts = append(parts, fmt.Sprintf("%s at %.0f ms", p.name, p.at))
	}
	return fmt.Sprintf("phases of the median start from the daemon's log: %s; online status at the subscriber at %.0f ms", strings.Join(parts, ", "), med)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func kib(n int) float64 { return float64(n) / 1024 }
