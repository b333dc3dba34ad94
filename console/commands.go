package console

import (
	"fmt"
	"strings"

	"github.com/iot-hsm/iot-hsm/protocol"
)

func (s *session) cmdStatus(args []string) error {
	fs, rf := s.requestFlags(protocol.CmdStatus, "")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	reply, err := s.call(protocol.CmdStatus, "", rf, nil)
	if err != nil || s.opts.json {
		return err
	}
	var st protocol.Status
	if err := result(reply, &st); err != nil {
		return err
	}
	printStatus(s.stdout, st)
	return nil
}

func (s *session) cmdHSMList(args []string) error {
	fs, rf := s.requestFlags(protocol.CmdHSMList, "")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	reply, err := s.call(protocol.CmdHSMList, "", rf, nil)
	if err != nil || s.opts.json {
		return err
	}
	var res protocol.HSMListResult
	if err := result(reply, &res); err != nil {
		return err
	}
	printHSMList(s.stdout, res)
	return nil
}

// cmdSetPIN takes secrets only from files or stdin: a PIN on the command line
// would be visible to every user through the process list and kept in shell history.
func (s *session) cmdSetPIN(args []string) error {
	fs, rf := s.requestFlags(protocol.CmdHSMSetPIN, "--hsm ID (--pin-file F | --pin-stdin) [--management-key-file F] [--persist] [--force]")
	hsmID := fs.String("hsm", "", "the HSM id")
	pinFile := fs.String("pin-file", "", "read the PIN from `FILE` (- for stdin)")
	pinStdin := fs.Bool("pin-stdin", false, "read the PIN from stdin")
	mgmtFile := fs.String("management-key-file", "", "read the YubiKey management key from `FILE`")
	persist := fs.Bool("persist", false, "keep the PIN on the appliance across restarts")
	force := fs.Bool("force", false, "present the PIN even when the token has one try left (a wrong PIN then blocks it)")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if *hsmID == "" {
		return usagef("--hsm is required")
	}
	switch {
	case *pinStdin && *pinFile != "":
		return usagef("give --pin-file or --pin-stdin, not both")
	case *pinStdin:
		*pinFile = "-"
	case *pinFile == "":
		return usagef("--pin-file or --pin-stdin is required (a PIN is never taken from the command line)")
	}
	a := protocol.HSMSetPINArgs{HSM: *hsmID, Persist: *persist, Force: *force}
	var err error
	if a.PIN, err = s.readSecret("pin-file", *pinFile); err != nil {
		return err
	}
	if *mgmtFile != "" {
		if a.ManagementKey, err = s.readSecret("management-key-file", *mgmtFile); err != nil {
			return err
		}
	}
	reply, err := s.call(protocol.CmdHSMSetPIN, "", rf, a)
	if err != nil || s.opts.json {
		return err
	}
	var res protocol.SetPINResult
	if err := result(reply, &res); err != nil {
		return err
	}
	set, retries := pinText(res.PIN)
	fmt.Fprintf(s.stdout, "%s: PIN %s, retries %s\n", dash(res.HSM), set, retries)
	return nil
}

func (s *session) cmdProvision(args []string) error {
	fs, rf := s.artefactFlags(protocol.CmdSlotProvision, "--hsm ID --slot S --mode generate|import|existing [--key-type T] [--key-pem FILE] [--key-password-file F] [--label L] [--overwrite]")
	var a protocol.ProvisionArgs
	fs.StringVar(&a.HSM, "hsm", "", "the HSM id")
	fs.StringVar(&a.Slot, "slot", "", "the slot: PIV slot, CKA_ID in hex, or Cloud KMS key name")
	fs.StringVar(&a.Mode, "mode", "", "generate, import or existing")
	fs.StringVar(&a.KeyType, "key-type", "", "rsa2048, rsa3072, rsa4096, p256 or p384")
	keyFile := fs.String("key-pem", "", "the private key to import, PEM `FILE` (- for stdin)")
	pwFile := fs.String("key-password-file", "", "read the key's password from `FILE`")
	fs.StringVar(&a.Label, "label", "", "key label")
	fs.BoolVar(&a.Overwrite, "overwrite", false, "replace a key already in the slot (asks first; --yes in scripts)")
	yes := fs.Bool("yes", false, "confirm --overwrite without asking")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if a.HSM == "" || a.Slot == "" {
		return usagef("--hsm and --slot are required")
	}
	if err := checkProvisionMode(a, *keyFile, *pwFile); err != nil {
		return err
	}
	if err := s.readImportKey(&a, *keyFile, *pwFile); err != nil {
		return err
	}
	var victim string
	if a.Overwrite {
		var err error
		if victim, err = s.confirmDestroy("slot.provision --overwrite", a.HSM, a.Slot, *yes); err != nil {
			return err
		}
	}
	if !s.opts.timeoutSet {
		s.opts.timeout = provisionTimeout
	}
	stop := s.progress(fmt.Sprintf("slot.provision %s/%s (%s %s)", a.HSM, a.Slot, a.Mode, a.KeyType))
	reply, err := s.call(protocol.CmdSlotProvision, "", rf, a)
	stop()
	if err != nil {
		return err
	}
	var res protocol.ProvisionResult
	if err := result(reply, &res); err != nil {
		return err
	}
	summary := fmt.Sprintf("slot_id: %s\nkey_type: %s\nca_id: %s", res.SlotID, dash(res.KeyType), dash(res.CAID))
	if victim != "" {
		summary = "destroyed: " + victim + "\n" + summary
	}
	if res.State != "" {
		summary += "\nstate: " + res.State
	}
	if res.Attestation != "" {
		summary += "\nattestation: present (see --json)"
	}
	if res.Note != "" {
		summary += "\nnote: " + res.Note
	}
	return s.emit(rf, artefact{text: res.PublicKey, summary: summary})
}

// checkProvisionMode checks the flags that go with each mode, before anything is read
// or sent.
func checkProvisionMode(a protocol.ProvisionArgs, keyFile, pwFile string) error {
	switch a.Mode {
	case "generate", "existing":
		if a.Mode == "generate" && a.KeyType == "" {
			return usagef("--mode generate needs --key-type: rsa2048, rsa3072, rsa4096, p256 or p384")
		}
		if keyFile != "" || pwFile != "" {
			return usagef("--key-pem and --key-password-file go with --mode import")
		}
	case "import":
		if keyFile == "" {
			return usagef("--mode import needs --key-pem")
		}
	default:
		return usagef("--mode must be generate, import or existing")
	}
	return nil
}

// readImportKey reads the key to import and its password, when given.
func (s *session) readImportKey(a *protocol.ProvisionArgs, keyFile, pwFile string) error {
	var err error
	if keyFile != "" {
		if a.KeyPEM, err = s.readSecret("key-pem", keyFile); err != nil {
			return err
		}
		a.KeyPEM += "\n"
	}
	if pwFile != "" {
		if a.KeyPassword, err = s.readSecret("key-password-file", pwFile); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) provisioningCert(cmd string, args []string) (*protocol.Reply, *requestFlags, error) {
	fs, rf := s.artefactFlags(cmd, "--slot-id ID --provisioning-cert FILE")
	var a protocol.ProvisioningCertArgs
	fs.StringVar(&a.SlotID, "slot-id", "", "the slot, <hsm-id>/<slot>")
	certFile := fs.String("provisioning-cert", "", "the provisioning certificate, PEM `FILE` (- for stdin)")
	if err := s.parse(fs, args); err != nil {
		return nil, nil, err
	}
	if a.SlotID == "" || *certFile == "" {
		return nil, nil, usagef("--slot-id and --provisioning-cert are required")
	}
	var err error
	if a.ProvisioningCert, err = s.readPEM("provisioning-cert", *certFile); err != nil {
		return nil, nil, err
	}
	reply, err := s.call(cmd, "", rf, a)
	return reply, rf, err
}

func (s *session) cmdSelfSign(args []string) error {
	reply, rf, err := s.provisioningCert(protocol.CmdSlotSelfSign, args)
	if err != nil {
		return err
	}
	var res protocol.CertificateResult
	if err := result(reply, &res); err != nil {
		return err
	}
	return s.emit(rf, artefact{text: res.Certificate, summary: "self-signed root: " + certSummary(res.Certificate)})
}

func (s *session) cmdCSR(args []string) error {
	reply, rf, err := s.provisioningCert(protocol.CmdSlotCSR, args)
	if err != nil {
		return err
	}
	var res protocol.CSRResult
	if err := result(reply, &res); err != nil {
		return err
	}
	return s.emit(rf, artefact{text: res.CSR, summary: "CSR for " + csrSummary(res.CSR) + "; the slot is csr_pending until slot.import_cert"})
}

func (s *session) cmdImportCert(args []string) error {
	fs, rf := s.artefactFlags(protocol.CmdSlotImport, "--slot-id ID --certificate FILE [--chain FILE]")
	var a protocol.ImportCertArgs
	fs.StringVar(&a.SlotID, "slot-id", "", "the slot, <hsm-id>/<slot>")
	certFile := fs.String("certificate", "", "the CA certificate, PEM `FILE` (- for stdin)")
	chainFile := fs.String("chain", "", "its issuers, PEM `FILE` (- for stdin)")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if a.SlotID == "" || *certFile == "" {
		return usagef("--slot-id and --certificate are required")
	}
	var err error
	if a.Certificate, err = s.readPEM("certificate", *certFile); err != nil {
		return err
	}
	if *chainFile != "" {
		if a.Chain, err = s.readPEM("chain", *chainFile); err != nil {
			return err
		}
	}
	reply, err := s.call(protocol.CmdSlotImport, "", rf, a)
	if err != nil {
		return err
	}
	var res protocol.SlotShow
	if err := result(reply, &res); err != nil {
		return err
	}
	return s.emit(rf, artefact{text: res.Certificate,
		summary: fmt.Sprintf("slot %s: %s, %s", res.SlotID, dash(res.State), certSummary(res.Certificate))})
}

func (s *session) cmdShow(args []string) error {
	fs, rf := s.artefactFlags(protocol.CmdSlotShow, "--slot-id ID")
	var a protocol.SlotIDArgs
	fs.StringVar(&a.SlotID, "slot-id", "", "the slot, <hsm-id>/<slot>")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if a.SlotID == "" {
		return usagef("--slot-id is required")
	}
	reply, err := s.call(protocol.CmdSlotShow, "", rf, a)
	if err != nil {
		return err
	}
	var res protocol.SlotShow
	if err := result(reply, &res); err != nil {
		return err
	}
	if !s.opts.json {
		printSlot(s.stdout, res)
	}
	// The certificate and its chain are what the PKI takes from the slot; before
	// they exist, the pending CSR.
	main, summary := res.Certificate, ""
	if main != "" && strings.TrimSpace(res.Chain) != "" {
		main = ensureNewline(main) + res.Chain
		summary = fmt.Sprintf("certificate and its chain (%d certificates in all)",
			strings.Count(main, "-----BEGIN CERTIFICATE-----"))
	}
	if main == "" {
		main = res.CSR
	}
	if main == "" {
		return nil
	}
	if rf.out == "" || rf.out == "-" {
		summary = "" // the table above says it
	}
	return s.emit(rf, artefact{text: main, summary: summary})
}

func (s *session) cmdClear(args []string) error {
	fs, rf := s.requestFlags(protocol.CmdSlotClear, "--slot-id ID [--destroy-key]")
	var a protocol.ClearArgs
	fs.StringVar(&a.SlotID, "slot-id", "", "the slot, <hsm-id>/<slot>")
	fs.BoolVar(&a.DestroyKey, "destroy-key", false, "also delete the key from the HSM (irreversible; asks first, --yes in scripts)")
	yes := fs.Bool("yes", false, "confirm --destroy-key without asking")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if a.SlotID == "" {
		return usagef("--slot-id is required")
	}
	var victim string
	if h, slot, ok := strings.Cut(a.SlotID, "/"); ok && a.DestroyKey {
		var err error
		if victim, err = s.confirmDestroy("slot.clear --destroy-key", h, slot, *yes); err != nil {
			return err
		}
	}
	reply, err := s.call(protocol.CmdSlotClear, "", rf, a)
	if err != nil || s.opts.json {
		return err
	}
	var res protocol.ClearResult
	if err := result(reply, &res); err != nil {
		return err
	}
	key := "key kept on the HSM"
	if res.KeyDestroyed {
		key = "key destroyed"
	}
	fmt.Fprintf(s.stdout, "slot %s: %s, %s\n", res.SlotID, dash(res.State), key)
	if res.KeyDestroyed && victim != "" {
		fmt.Fprintf(s.stdout, "destroyed: %s\n", victim)
	}
	return nil
}

func (s *session) cmdAuditTail(args []string) error {
	fs, rf := s.requestFlags(protocol.CmdAuditTail, "[--n N]")
	n := fs.Int("n", 0, "how many records (0: the device's default)")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if *n < 0 {
		return usagef("--n must not be negative")
	}
	var a any
	if *n > 0 {
		a = struct {
			N int `json:"n"`
		}{*n}
	}
	reply, err := s.call(protocol.CmdAuditTail, "", rf, a)
	if err != nil || s.opts.json {
		return err
	}
	var res protocol.AuditTailResult
	if err := result(reply, &res); err != nil {
		return err
	}
	printAudit(s.stdout, res)
	return nil
}

func (s *session) cmdReload(args []string) error {
	fs, rf := s.requestFlags(protocol.CmdReload, "")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	reply, err := s.call(protocol.CmdReload, "", rf, nil)
	if err != nil || s.opts.json {
		return err
	}
	var res protocol.ReloadResult
	if err := result(reply, &res); err != nil {
		return err
	}
	printReload(s.stdout, res)
	if len(res.Problems) > 0 {
		return &exitError{code: exitFailed, msg: fmt.Sprintf("%d problem(s): the rest of the reload stands", len(res.Problems))}
	}
	return nil
}

func (s *session) cmdRestart(args []string) error {
	return s.simple(protocol.CmdRestart, args, "the device is restarting")
}

// simple runs a command without arguments whose result is only its success.
func (s *session) simple(cmd string, args []string, done string) error {
	fs, rf := s.requestFlags(cmd, "")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	if _, err := s.call(cmd, "", rf, nil); err != nil || s.opts.json {
		return err
	}
	fmt.Fprintf(s.stdout, "%s: ok, %s\n", cmd, done)
	return nil
}
