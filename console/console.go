// Package console is the operator's MQTT console, `iot-hsm console`: one subcommand
// per protocol command (spelled as the protocol spells it), plus devices, watch and
// make-provisioning-cert. It speaks to the appliance only through the broker, exactly
// as any other client of the contract would, so it needs no access to the device.
package console

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailed      = 1 // the device answered an error (or a local step after it failed)
	exitUsage       = 2
	exitUnreachable = 3 // no reply in time, or no broker
)

const (
	defaultBroker  = "tcp://127.0.0.1:1883"
	defaultTimeout = 30 * time.Second
	// Generating an RSA-4096 key on a YubiKey takes minutes; the device allows
	// slot.provision three minutes too.
	provisionTimeout = 3 * time.Minute
)

const usageText = `usage: iot-hsm console [global flags] COMMAND [command flags]

global flags (also accepted after COMMAND):
  --broker URL          broker (default $IOT_HSM_BROKER or tcp://127.0.0.1:1883)
  --device ID           device (default $IOT_HSM_DEVICE, or the only one online)
  --root ROOT           topic root (default iot-hsm)
  --json                print the reply envelope as JSON
  --timeout D           wait this long for the reply (default 30s; slot.provision 3m)
  --username U, --password-file F
  --ca-file F, --cert-file F, --key-file F
  --allow-plaintext     allow tcp:// to a broker that is not on this machine
  --sign-key F, --sign-cert F
                        sign requests (JWS) with this PEM private key and its PEM
                        certificate (and chain), for appliances with [trust] controllers

protocol commands (each also takes --id ID; --out F, where shown, writes the result's
certificate, CSR, CRL, key or DER to F; a PEM input FILE may be - for stdin):
  status
  hsm.list
  hsm.set_pin --hsm ID (--pin-file F | --pin-stdin) [--management-key-file F] [--persist] [--force]
  slot.provision --hsm ID --slot S --mode generate|import|existing [--key-type T]
                 [--key-pem FILE] [--key-password-file F] [--label L] [--overwrite] [--out F]
  slot.selfsign --slot-id ID --provisioning-cert FILE [--out F]
  slot.csr --slot-id ID --provisioning-cert FILE [--out F]
  slot.import_cert --slot-id ID --certificate FILE [--chain FILE] [--out F]
  slot.show --slot-id ID [--out F]       (the certificate and its chain)
  slot.clear --slot-id ID [--destroy-key]
  sign (--slot-id ID | --ca-id ID) --kind certificate|crl|cms|ocsp|tbs_certificate|digest ... [--out F]
                 (sign -h lists the flags of every kind)
  audit.tail [--n N]
  reload
  restart
  ota.update --url URL --sha256 HEX --size BYTES [--signature FILE.minisig] [--allow-downgrade]
                 [--wait=false] [--wait-timeout D]
  ota.status

other commands:
  provision [--hsm H] [--slot S] [--mode M] [--key-type T] [--provisioning-cert F] [--as root|csr]
            [--csr-out F] [--certificate F] [--chain F] [--out F] [--yes]
                                         guided provisioning of one CA slot; asks on a terminal,
                                         resumes a slot left half-way
  devices [--wait D]                     devices seen through their retained status
  watch [--all] [--count N] [--for D]    status and events as they arrive
  revoke --slot-id ID --list FILE [--serial HEX [--reason R] [--revoked-at T]] --next-update-in D
                                         add a serial to a local revocation list and sign a CRL of
                                         it with the number after the CA's last one
  make-provisioning-cert --cn NAME [--org O] [--country C] [--validity D] [--path-len N]
                 [--permitted-dns a,b] [--policy OID,...] [--crl-dp URL,...] [--out FILE]

exit status: 0 ok, 1 the device answered an error, 2 usage error, 3 timeout or broker unreachable
`

// exitError ends a command with an exit code. An empty msg means the problem has
// already been reported.
type exitError struct {
	code int
	msg  string
	err  error // the sentinel it stands for, if any
}

func (e *exitError) Error() string { return e.msg }

func (e *exitError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &exitError{code: exitUsage, msg: fmt.Sprintf(format, args...)}
}

func unreachablef(format string, args ...any) error {
	return &exitError{code: exitUnreachable, msg: fmt.Sprintf(format, args...)}
}

// errReported: the device answered an error, which is already printed.
var errReported = &exitError{code: exitFailed}

// errUsageReported: the flag package already printed the problem and the synopsis.
var errUsageReported = &exitError{code: exitUsage}

// errHelp: -h was asked for and answered.
var errHelp = &exitError{code: exitOK}

// options are the global flags.
type options struct {
	broker         string
	device         string
	root           string
	json           bool
	timeout        time.Duration
	timeoutSet     bool
	username       string
	passwordFile   string
	caFile         string
	certFile       string
	keyFile        string
	allowPlaintext bool
	signKey        string // signs requests (JWS) for appliances that require it
	signCert       string
}

// durationValue records whether the flag was given, because slot.provision has a
// longer default than every other command.
type durationValue struct {
	d   *time.Duration
	set *bool
}

func (v durationValue) String() string {
	if v.d == nil {
		return ""
	}
	return v.d.String()
}

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return errors.New("want a positive duration such as 30s or 2m")
	}
	*v.d, *v.set = d, true
	return nil
}

// register defines the global flags on fs with the current values as defaults, so
// that defining them again on a command's FlagSet keeps what was parsed before the
// command name.
func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.broker, "broker", o.broker, "broker URL")
	fs.StringVar(&o.device, "device", o.device, "device id")
	fs.StringVar(&o.root, "root", o.root, "topic root")
	fs.BoolVar(&o.json, "json", o.json, "print the reply envelope as JSON")
	fs.Var(durationValue{&o.timeout, &o.timeoutSet}, "timeout", "how long to wait for the reply")
	fs.StringVar(&o.username, "username", o.username, "broker user name")
	fs.StringVar(&o.passwordFile, "password-file", o.passwordFile, "file holding the broker password")
	fs.StringVar(&o.caFile, "ca-file", o.caFile, "PEM bundle of the broker's CA")
	fs.StringVar(&o.certFile, "cert-file", o.certFile, "client certificate for the broker")
	fs.StringVar(&o.keyFile, "key-file", o.keyFile, "client certificate key")
	fs.BoolVar(&o.allowPlaintext, "allow-plaintext", o.allowPlaintext, "allow tcp:// to a non-loopback broker")
	fs.StringVar(&o.signKey, "sign-key", o.signKey, "sign requests with this private key (PEM `FILE`), for appliances with trust.controllers")
	fs.StringVar(&o.signCert, "sign-cert", o.signCert, "the certificate (and chain) of --sign-key, PEM `FILE`")
}

func (o *options) check() error {
	if o.root == "" || strings.ContainsAny(o.root, "+#\x00") || strings.HasPrefix(o.root, "/") || strings.HasSuffix(o.root, "/") {
		return usagef("--root %q is not a usable topic root", o.root)
	}
	if o.device != "" && !mqtt.ValidTopicLevel(o.device) {
		return usagef("--device %q is not a usable topic level", o.device)
	}
	return nil
}

// session is one invocation: the options, the standard streams and what has been
// taken from stdin.
type session struct {
	opts      options
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
	stdinUsed string        // the flag that read stdin, which can be read only once
	in        *bufio.Reader // the answers to the questions of a terminal session
	seen      []seenDevice  // the retained status documents, once read
	seenRead  bool
}

var commands = map[string]func(s *session, args []string) error{
	protocol.CmdStatus:        (*session).cmdStatus,
	protocol.CmdHSMList:       (*session).cmdHSMList,
	protocol.CmdHSMSetPIN:     (*session).cmdSetPIN,
	protocol.CmdSlotProvision: (*session).cmdProvision,
	protocol.CmdSlotSelfSign:  (*session).cmdSelfSign,
	protocol.CmdSlotCSR:       (*session).cmdCSR,
	protocol.CmdSlotImport:    (*session).cmdImportCert,
	protocol.CmdSlotShow:      (*session).cmdShow,
	protocol.CmdSlotClear:     (*session).cmdClear,
	protocol.CmdSign:          (*session).cmdSign,
	protocol.CmdAuditTail:     (*session).cmdAuditTail,
	protocol.CmdReload:        (*session).cmdReload,
	protocol.CmdRestart:       (*session).cmdRestart,
	protocol.CmdOTAUpdate:     (*session).cmdOTAUpdate,
	protocol.CmdOTAStatus:     (*session).cmdOTAStatus,
	"devices":                 (*session).cmdDevices,
	"watch":                   (*session).cmdWatch,
	"make-provisioning-cert":  (*session).cmdMakeProvisioningCert,
	"provision":               (*session).cmdWizard,
	"revoke":                  (*session).cmdRevoke,
}

// Run runs the console with args (what follows "console" on the command line) and
// returns the exit status.
func Run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	s := &session{stdin: stdin, stdout: stdout, stderr: stderr}
	s.opts = options{
		broker:  defaultBroker,
		device:  os.Getenv("IOT_HSM_DEVICE"),
		root:    protocol.DefaultRoot,
		timeout: defaultTimeout,
	}
	if b := os.Getenv("IOT_HSM_BROKER"); b != "" {
		s.opts.broker = b
	}

	fs := flag.NewFlagSet("iot-hsm console", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usageText) }
	s.opts.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	name := fs.Arg(0)
	if name == "help" {
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "console: unknown command %q (iot-hsm console help lists them)\n", name)
		return exitUsage
	}
	return s.finish(name, cmd(s, fs.Args()[1:]))
}

// finish reports err and turns it into the exit status.
func (s *session) finish(name string, err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		fmt.Fprintf(s.stderr, "console: %s: %v\n", name, err)
		return exitFailed
	}
	if ee.msg != "" {
		fmt.Fprintf(s.stderr, "console: %s: %s\n", name, ee.msg)
	}
	return ee.code
}

// flags makes a command's FlagSet, carrying the global flags too so that they can
// follow the command name.
func (s *session) flags(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(s.stderr)
	s.opts.register(fs)
	globals := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { globals[f.Name] = true })
	fs.Usage = func() {
		fmt.Fprintf(s.stderr, "usage: iot-hsm console %s %s\n", name, synopsis)
		// The global flags are listed once, by iot-hsm console help, not under
		// every command.
		own := flag.NewFlagSet(name, flag.ContinueOnError)
		own.SetOutput(s.stderr)
		fs.VisitAll(func(f *flag.Flag) {
			if !globals[f.Name] {
				own.Var(f.Value, f.Name, f.Usage)
				own.Lookup(f.Name).DefValue = f.DefValue // not what was parsed
			}
		})
		own.PrintDefaults()
		fmt.Fprintln(s.stderr, "global flags: iot-hsm console help")
	}
	return fs
}

// requestFlags are the flags every protocol command takes.
type requestFlags struct {
	id  string
	out string
}

func (s *session) requestFlags(name, synopsis string) (*flag.FlagSet, *requestFlags) {
	fs := s.flags(name, synopsis)
	rf := &requestFlags{}
	fs.StringVar(&rf.id, "id", "", "request id (default: random)")
	return fs, rf
}

// artefactFlags are requestFlags and --out, for the commands whose result is a
// certificate, CSR, CRL, key or DER: only there does --out mean anything.
func (s *session) artefactFlags(name, synopsis string) (*flag.FlagSet, *requestFlags) {
	fs, rf := s.requestFlags(name, synopsis)
	fs.StringVar(&rf.out, "out", "", "write the result's certificate, CSR, CRL or DER to `FILE` instead of stdout")
	return fs, rf
}

func (s *session) parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return errUsageReported
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return s.opts.check()
}

// isSet reports whether the flag was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			found = true
		}
	})
	return found
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
