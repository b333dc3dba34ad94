package console

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

func table(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func timeOrDash(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func pinText(p protocol.PINStatus) (set, retries string) {
	set = "not set"
	if p.Set {
		set = "set"
	}
	retries = "-"
	if p.Retries != nil {
		retries = strconv.Itoa(*p.Retries)
	}
	return set, retries
}

// statusLine is the one-line summary of a status document (status, watch). A slot
// still being provisioned is counted apart: it is not a CA that is missing.
func statusLine(st protocol.Status) string {
	if !st.Online {
		return "offline"
	}
	provisioned, pending := 0, 0
	for _, sl := range st.Slots {
		switch sl.State {
		case "provisioned":
			provisioned++
		case "key_ready", "csr_pending":
			pending++
		}
	}
	if len(st.Slots) < st.SlotsTotal { // a document without its slot list
		provisioned = st.SlotsTotal
	}
	line := fmt.Sprintf("online, %d/%d CAs connected", st.ConnectedSlots, provisioned)
	if pending > 0 {
		line += fmt.Sprintf(", %d slot(s) being provisioned", pending)
	}
	line += ", broker " + dash(st.Broker)
	if len(st.Problems) > 0 {
		line += fmt.Sprintf(", %d problem(s)", len(st.Problems))
	}
	if st.Version != "" {
		line += ", version " + st.Version
	}
	return line
}

func eventLine(ev protocol.Event) string {
	parts := []string{dash(ev.Type)}
	if ev.HSM != "" {
		parts = append(parts, "hsm="+ev.HSM)
	}
	if ev.SlotID != "" {
		parts = append(parts, "slot="+ev.SlotID)
	}
	if ev.State != "" {
		parts = append(parts, "state="+ev.State)
	}
	if ev.Message != "" {
		parts = append(parts, strconv.Quote(ev.Message))
	}
	return strings.Join(parts, " ")
}

func printStatus(w io.Writer, st protocol.Status) {
	fmt.Fprintf(w, "device %s: %s\n", dash(st.Device), statusLine(st))
	if st.StartedAt != nil {
		fmt.Fprintf(w, "started %s, time %s\n", timeOrDash(st.StartedAt), timeOrDash(&st.Time))
	}
	for _, p := range st.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
	if st.Web != nil {
		fmt.Fprintf(w, "web dashboard on %s, certificate SHA-256 %s\n", st.Web.Listen, dash(st.Web.Fingerprint))
	}
	c := st.Counters
	fmt.Fprintf(w, "requests %d, signatures %d, errors %d, dropped %d\n", c.Requests, c.Signatures, c.Errors, c.Dropped)

	fmt.Fprintln(w)
	tw := table(w)
	fmt.Fprintln(tw, "HSM\tKIND\tPRESENT\tPIN\tRETRIES")
	for _, h := range st.HSMs {
		set, retries := pinText(h.PIN)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h.ID, dash(h.Kind), yesNo(h.Present), set, retries)
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = table(w)
	fmt.Fprintln(tw, "SLOT_ID\tSTATE\tCONNECTED\tKEY\tSUBJECT\tNOT_AFTER")
	for _, sl := range st.Slots {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", sl.SlotID, dash(sl.State), yesNo(sl.Connected),
			dash(sl.KeyType), dash(sl.Subject), timeOrDash(sl.NotAfter))
	}
	tw.Flush()
}

func printHSMList(w io.Writer, res protocol.HSMListResult) {
	// In the order of status, whose numbers the short names use.
	slices.SortFunc(res.HSMs, func(a, b protocol.HSM) int { return strings.Compare(a.ID, b.ID) })
	for _, h := range res.HSMs {
		slices.SortFunc(h.Slots, func(a, b protocol.HSMSlot) int { return strings.Compare(a.Slot, b.Slot) })
	}
	tw := table(w)
	fmt.Fprintln(tw, "HSM\tKIND\tMODEL\tSERIAL\tPRESENT\tPIN\tRETRIES")
	for _, h := range res.HSMs {
		set, retries := pinText(h.PIN)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.ID, dash(h.Kind), dash(h.Model), dash(h.Serial),
			yesNo(h.Present), set, retries)
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = table(w)
	fmt.Fprintln(tw, "HSM\tSLOT\tOCCUPIED\tKEY\tLABEL")
	for _, h := range res.HSMs {
		if h.SlotsError != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t(%s)\n", h.ID, h.SlotsError)
		}
		for _, sl := range h.Slots {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h.ID, sl.Slot, yesNo(sl.Occupied), dash(sl.KeyType), dash(sl.Label))
		}
	}
	tw.Flush()
}

// printSlot prints slot.show's key: value lines; the certificate follows separately.
func printSlot(w io.Writer, sl protocol.SlotShow) {
	tw := table(w)
	line := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	line("slot_id", sl.SlotID)
	line("hsm", dash(sl.HSM))
	line("state", dash(sl.State))
	line("connected", yesNo(sl.Connected))
	line("key_type", dash(sl.KeyType))
	if sl.Label != "" {
		line("label", sl.Label)
	}
	line("ca_id", dash(sl.CAID))
	line("subject", dash(sl.Subject))
	line("not_after", timeOrDash(sl.NotAfter))
	if sl.Chain != "" {
		line("chain", fmt.Sprintf("%d certificates", strings.Count(sl.Chain, "-----BEGIN CERTIFICATE-----")))
	}
	if sl.CSR != "" {
		line("csr", "pending")
	}
	if sl.Attestation != "" {
		line("attestation", "present (see --json)")
	}
	tw.Flush()
}

func printReload(w io.Writer, res protocol.ReloadResult) {
	list := func(v []string) string {
		if len(v) == 0 {
			return "-"
		}
		return strings.Join(v, ", ")
	}
	fmt.Fprintf(w, "reload: applied: %s\n", list(res.Applied))
	fmt.Fprintf(w, "restart required for: %s\n", list(res.RestartRequired))
	fmt.Fprintf(w, "HSMs: %d, %d present\n", res.HSMs, res.HSMsPresent)
	for _, p := range res.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
}

func printAudit(w io.Writer, res protocol.AuditTailResult) {
	tw := table(w)
	fmt.Fprintln(tw, "SEQ\tTIME\tCMD\tRESULT\tSLOT_ID\tREQUEST\tDETAIL")
	for _, r := range res.Records {
		var detail []string
		for _, kv := range [][2]string{{"kind", r.Kind}, {"subject", r.Subject}, {"serial", r.Serial},
			{"by", r.Requester}, {"note", r.Note}} {
			if kv[1] != "" {
				detail = append(detail, kv[0]+"="+kv[1])
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, timeOrDash(&r.Time), r.Command, dash(r.Result),
			dash(r.SlotID), dash(r.RequestID), dash(strings.Join(detail, " ")))
	}
	tw.Flush()
	fmt.Fprintf(w, "head: %s\n", dash(res.Head))
}

func printDevices(w io.Writer, seen []seenDevice) {
	tw := table(w)
	fmt.Fprintln(tw, "DEVICE\tONLINE\tCONNECTED/TOTAL\tVERSION\tBROKER")
	for _, d := range seen {
		st := d.status
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\n", d.id, yesNo(st.Online), st.ConnectedSlots, st.SlotsTotal,
			dash(st.Version), dash(st.Broker))
	}
	tw.Flush()
}

func ensureNewline(s string) string {
	if s != "" && !strings.HasSuffix(s, "\n") {
		return s + "\n"
	}
	return s
}

// artefact is a command's main result: written to --out, or to stdout where it can
// be redirected, while the summary goes to stderr so it never ends up in the file.
type artefact struct {
	text    string // PEM, written as is
	der     []byte // binary, base64 on stdout
	summary string
}

func (s *session) emit(rf *requestFlags, a artefact) error {
	data := []byte(ensureNewline(a.text))
	if a.text == "" {
		data = a.der
	}
	if rf.out != "" && rf.out != "-" {
		if err := os.WriteFile(rf.out, data, 0o644); err != nil {
			return fmt.Errorf("--out: %v", err)
		}
		if !s.opts.json && a.summary != "" {
			fmt.Fprintf(s.stderr, "%s (written to %s)\n", a.summary, rf.out)
		}
		return nil
	}
	if s.opts.json {
		return nil // the envelope on stdout already holds it
	}
	if a.text == "" && a.der != nil {
		data = []byte(base64.StdEncoding.EncodeToString(a.der) + "\n")
	}
	s.stdout.Write(data)
	if a.summary != "" {
		fmt.Fprintln(s.stderr, a.summary)
	}
	return nil
}

// certSummary describes a PEM certificate for a summary line; it says nothing
// rather than fail, since the device already vouched for what it returned.
func certSummary(pemText string) string {
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		return ""
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%s, serial %x, not after %s", c.Subject, c.SerialNumber, c.NotAfter.UTC().Format(time.RFC3339))
}

func csrSummary(pemText string) string {
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		return ""
	}
	c, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return ""
	}
	return c.Subject.String()
}
