package console

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/iot-hsm/iot-hsm/protocol"
)

const wizardSynopsis = `[--hsm H] [--slot S] [--mode generate|import|existing] [--key-type T] [--key-pem F]
       [--key-password-file F] [--label L] [--provisioning-cert F] [--as root|csr] [--csr-out F]
       [--certificate F] [--chain F] [--out F]
On a terminal every missing answer is asked for; in a script the flags give them.
A slot left half-way (key_ready, csr_pending) is taken up where it stopped.`

// wizardFlags are the answers given on the command line.
type wizardFlags struct {
	hsm, slot, mode, keyType, keyPEM, keyPassword, label string
	provCert, as, csrOut, certificate, chain, out        string
}

func (f *wizardFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&f.hsm, "hsm", "", "the HSM: its id, number in the list, serial, or a unique start of its id")
	fs.StringVar(&f.slot, "slot", "", "the slot in the HSM (PKCS#11 CKA_ID in hex, PIV slot, Cloud KMS key), or <hsm>/<slot>")
	fs.StringVar(&f.mode, "mode", "", "generate (default), import or existing")
	fs.StringVar(&f.keyType, "key-type", "", "with generate: rsa2048, rsa3072, rsa4096, p256 (default) or p384")
	fs.StringVar(&f.keyPEM, "key-pem", "", "with import: the private key, PEM `FILE`")
	fs.StringVar(&f.keyPassword, "key-password-file", "", "with import: the key's password, `FILE`")
	fs.StringVar(&f.label, "label", "", "key label")
	fs.StringVar(&f.provCert, "provisioning-cert", "", "the provisioning certificate, PEM `FILE` (- for stdin)")
	fs.StringVar(&f.as, "as", "", "root (self-signed) or csr (an intermediate, signed by another CA)")
	fs.StringVar(&f.csrOut, "csr-out", "", "write the CSR to `FILE` (default <hsm>_<slot>.csr)")
	fs.StringVar(&f.certificate, "certificate", "", "the signed certificate, PEM `FILE`; without it the wizard stops at csr_pending")
	fs.StringVar(&f.chain, "chain", "", "the signed certificate's issuers, PEM `FILE`")
	fs.StringVar(&f.out, "out", "", "write the CA certificate and its chain to `FILE`")
}

// wizard is one run of `iot-hsm console provision`.
type wizard struct {
	s      *session
	f      wizardFlags
	ask    bool // a terminal: missing answers are asked for
	hsm    protocol.HSM
	hsms   []protocol.HSM
	slot   string // within the HSM
	slotID string
	// tookOver: mode existing found the slot's certificate on the token, so
	// the slot is provisioned and needs no certificate step.
	tookOver bool
}

func (s *session) cmdWizard(args []string) error {
	fs := s.flags("provision", wizardSynopsis)
	w := &wizard{s: s}
	w.f.define(fs)
	if err := s.parse(fs, args); err != nil {
		return err
	}
	s.opts.json = false // the wizard talks to a person; the protocol commands have --json
	w.ask = s.interactive()
	if err := w.device(); err != nil {
		return err
	}
	if err := w.pickHSM(); err != nil {
		return err
	}
	rec, err := w.pickSlot()
	if err != nil {
		return err
	}
	return w.from(rec)
}

// from runs the steps that remain for a slot in the state of rec.
func (w *wizard) from(rec *protocol.SlotShow) error {
	state := ""
	if rec != nil {
		state = rec.State
	}
	if err := w.scripted(state); err != nil {
		return err
	}
	switch state {
	case "":
		if err := w.makeKey(); err != nil || w.tookOver {
			return err
		}
		return w.certify()
	case "key_ready":
		w.say("Slot %s holds a key (%s, ca_id %s) and waits for its certificate: going on from there.", w.slotID, dash(rec.KeyType), short(rec.CAID))
		return w.certify()
	case "csr_pending":
		w.say("Slot %s waits for its signed certificate: going on from there.", w.slotID)
		path, err := w.writeCSR(rec.CSR)
		if err != nil {
			return err
		}
		return w.takeCert(path)
	case "provisioned":
		return &exitError{code: exitFailed, err: ErrExists, msg: fmt.Sprintf("%s is already provisioned (%s); pick a free slot, or replace it with slot.provision --overwrite",
			w.slotID, describeSlot(*rec))}
	}
	return fmt.Errorf("slot %s is in state %q, which this console does not know", w.slotID, state)
}

// scripted checks, without a terminal, that the flags answer every question the
// remaining steps ask, before any of them changes the slot.
func (w *wizard) scripted(state string) error {
	if w.ask || (state != "" && state != "key_ready") {
		return nil
	}
	for _, f := range []struct{ name, value string }{{"provisioning-cert", w.f.provCert}, {"as", w.f.as}} {
		if f.value == "" {
			return usagef("--%s is required (no terminal to ask on)", f.name)
		}
	}
	if (w.f.mode == "import") != (w.f.keyPEM != "") && state == "" {
		return usagef("--key-pem goes with --mode import, and --mode import needs it")
	}
	return nil
}

// ErrExists: the slot the wizard was pointed at is already provisioned.
var ErrExists = errors.New("already provisioned")

func (w *wizard) say(format string, args ...any) {
	fmt.Fprintf(w.s.stdout, format+"\n", args...)
}

// device settles the device once, so that every step goes to the same one.
func (w *wizard) device() error {
	cn, err := w.s.connect()
	if err != nil {
		return err
	}
	defer cn.close()
	dev, _, err := w.s.targetDevice(cn)
	if err != nil {
		return err
	}
	w.s.opts.device = dev
	return nil
}

// answer returns the flag's value, else on a terminal asks until check accepts the
// answer; in a script the missing flag is a usage error.
func (w *wizard) answer(flagName, value, question, def string, check func(string) (string, error)) (string, error) {
	if value != "" {
		return check(value)
	}
	if !w.ask {
		if def != "" {
			return check(def)
		}
		return "", usagef("--%s is required (no terminal to ask on)", flagName)
	}
	for {
		a, err := w.s.ask(question, def)
		if err != nil {
			return "", err
		}
		v, err := check(a)
		if err == nil {
			return v, nil
		}
		var ee *exitError
		if !errors.As(err, &ee) && !errors.Is(err, errBadAnswer) {
			return "", err
		}
		w.say("  %v", err)
	}
}

func badAnswerf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadAnswer, fmt.Sprintf(format, args...))
}

func (w *wizard) call(cmd string, args, res any) error {
	reply, err := w.s.call(cmd, "", &requestFlags{}, args)
	if err != nil {
		return err
	}
	return result(reply, res)
}

// pickHSM lists the HSMs and takes one by number, id, serial or a short id.
func (w *wizard) pickHSM() error {
	var list protocol.HSMListResult
	if err := w.call(protocol.CmdHSMList, nil, &list); err != nil {
		return err
	}
	if len(list.HSMs) == 0 {
		return notFoundf("device %s has no HSM", w.s.opts.device)
	}
	w.hsms = list.HSMs
	if w.ask && w.f.hsm == "" {
		w.say("HSMs on %s:", w.s.opts.device)
		tw := table(w.s.stdout)
		for i, h := range list.HSMs {
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\tserial %s\t%s\n", i+1, h.ID, dash(h.Kind), dash(h.Model), dash(h.Serial), hsmState(h))
		}
		tw.Flush()
	}
	hsmID := w.f.hsm
	if h, _, ok := strings.Cut(w.f.slot, "/"); ok && hsmID == "" {
		hsmID = h
	}
	id, err := w.answer("hsm", hsmID, "HSM (number, id or serial)", "1", func(a string) (string, error) {
		return resolveHSM(hsmsOfList(list), a)
	})
	if err != nil {
		return err
	}
	for _, h := range list.HSMs {
		if h.ID == id {
			w.hsm = h
		}
	}
	if !w.hsm.Present || w.hsm.SlotsError != "" {
		return &exitError{code: exitFailed, msg: fmt.Sprintf("HSM %s cannot be used now: %s; a missing PIN is set with iot-hsm console hsm.set_pin --hsm %s --pin-file F",
			id, hsmState(w.hsm), id)}
	}
	return nil
}

func hsmState(h protocol.HSM) string {
	switch {
	case !h.Present:
		return "absent"
	case h.SlotsError != "":
		return h.SlotsError
	case !h.PIN.Set:
		return "PIN not set"
	}
	return "ready"
}

// records returns the slot records of the HSM, from the device's status now.
func (w *wizard) records() (map[string]protocol.StatusSlot, error) {
	var st protocol.Status
	if err := w.call(protocol.CmdStatus, nil, &st); err != nil {
		return nil, err
	}
	out := map[string]protocol.StatusSlot{}
	for _, sl := range st.Slots {
		if h, slot, ok := strings.Cut(sl.SlotID, "/"); ok && h == w.hsm.ID {
			out[slot] = sl
		}
	}
	return out, nil
}

// pickSlot lists the HSM's slots and takes one; it returns the slot's record, nil
// for a slot without one.
func (w *wizard) pickSlot() (*protocol.SlotShow, error) {
	recs, err := w.records()
	if err != nil {
		return nil, err
	}
	free := freeSlots(w.hsm, recs)
	if w.ask && w.f.slot == "" {
		w.listSlots(recs, free)
	}
	def := ""
	if len(free) > 0 {
		def = free[0]
	}
	given := w.f.slot
	if _, slot, ok := strings.Cut(given, "/"); ok {
		given = slot
	}
	w.slot, err = w.answer("slot", given, "Slot", def, func(a string) (string, error) {
		if a == "" || strings.ContainsAny(a, " +#") {
			return "", badAnswerf("%q is no slot name", a)
		}
		return a, nil
	})
	if err != nil {
		return nil, err
	}
	w.slotID = w.hsm.ID + "/" + w.slot
	for slot := range recs {
		if sameSlot(slot, w.slot) {
			var rec protocol.SlotShow
			if err := w.call(protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: w.hsm.ID + "/" + slot}, &rec); err != nil {
				return nil, err
			}
			w.slot, w.slotID = slot, rec.SlotID
			return &rec, nil
		}
	}
	return nil, nil
}

func (w *wizard) listSlots(recs map[string]protocol.StatusSlot, free []string) {
	w.say("Slots of %s:", w.hsm.ID)
	for _, slot := range sortedKeys(recs) {
		sl := recs[slot]
		what := sl.State
		switch sl.State {
		case "key_ready":
			what += ": key made, no certificate yet (choosing it goes on from there)"
		case "csr_pending":
			what += ": waits for its signed certificate (choosing it goes on from there)"
		case "provisioned":
			what += ", " + dash(sl.Subject)
		}
		w.say("  %-6s %s", slot, what)
	}
	for _, sl := range w.hsm.Slots {
		if _, ok := recs[sl.Slot]; !ok && sl.Occupied {
			w.say("  %-6s a %s key without a CA (label %q): usable with mode existing", sl.Slot, dash(sl.KeyType), sl.Label)
		}
	}
	if len(free) > 0 {
		w.say("  free:  %s", strings.Join(free, " "))
	}
}

// freeSlots suggests slots that hold neither a key nor a record: the PIV slots of a
// YubiKey, the next CKA_IDs of a PKCS#11 token, key names for Cloud KMS.
func freeSlots(h protocol.HSM, recs map[string]protocol.StatusSlot) []string {
	used := func(name string) bool {
		for slot := range recs {
			if sameSlot(slot, name) {
				return true
			}
		}
		for _, sl := range h.Slots {
			if sameSlot(sl.Slot, name) || strings.HasPrefix(sl.Slot, name+"/") {
				return true
			}
		}
		return false
	}
	var candidates []string
	switch h.Kind {
	case "yubikey":
		candidates = []string{"9a", "9c", "9d", "9e"}
		for k := 0x82; k <= 0x95; k++ {
			candidates = append(candidates, fmt.Sprintf("%x", k))
		}
	case "cloudkms":
		for i := 1; i <= 50; i++ {
			candidates = append(candidates, fmt.Sprintf("ca-%d", i))
		}
	default:
		for i := 1; i <= 0xff; i++ {
			candidates = append(candidates, fmt.Sprintf("%02x", i))
		}
	}
	var free []string
	for _, c := range candidates {
		if !used(c) {
			free = append(free, c)
		}
		if len(free) == 8 {
			break
		}
	}
	return free
}

// writeFile writes an artefact the operator asked for, owner-readable only when it
// is secret, which none of the wizard's are.
func writeFile(path, text string) error {
	if err := os.WriteFile(path, []byte(ensureNewline(text)), 0o644); err != nil {
		return fmt.Errorf("%w: %v", errBadAnswer, err)
	}
	return nil
}
