package console

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

const signSynopsis = `(--slot-id ID | --ca-id ID) --kind KIND [kind flags]
  certificate:     --csr FILE [--profile FILE] [--validity D] [--not-before T] [--not-after T]
                   [--serial HEX] [--is-ca] [--max-path-len N] [--key-usage a,b] [--ext-key-usage a,b]
                   [--dns a,b] [--ip a,b] [--email a,b] [--uri a,b] [--crl-dp a,b] [--ocsp a,b] [--issuer-url a,b]
  crl:             --number N [--this-update T] (--next-update T | --next-update-in D) [--revoked FILE]
  cms:             --data FILE [--detached]
  ocsp:            --responses FILE [--this-update T] (--next-update T | --next-update-in D) [--nonce HEX]
  tbs_certificate: --tbs FILE (DER)
  digest:          --digest HEX [--hash sha256|sha384|sha512] [--pss]
times are RFC 3339; FILE may be - for stdin`

// kindFlags are the flags that belong to each kind. A flag of another kind is
// refused rather than ignored: the operator meant something by it.
var kindFlags = map[string][]string{
	protocol.KindCertificate: {"csr", "profile", "validity", "not-before", "not-after", "serial", "is-ca", "max-path-len",
		"key-usage", "ext-key-usage", "dns", "ip", "email", "uri", "crl-dp", "ocsp", "issuer-url"},
	protocol.KindCRL:    {"number", "this-update", "next-update", "next-update-in", "revoked"},
	protocol.KindCMS:    {"data", "detached"},
	protocol.KindOCSP:   {"responses", "this-update", "next-update", "next-update-in", "nonce"},
	protocol.KindTBS:    {"tbs"},
	protocol.KindDigest: {"digest", "hash", "pss"},
}

// signFlags holds every sign flag; which ones apply depends on --kind.
type signFlags struct {
	slotID, caID, kind string

	csr, profile, validity, notBefore, notAfter, serial string
	isCA                                                bool
	maxPathLen                                          int
	keyUsage, extKeyUsage, dns, ip, email, uri          string
	crlDP, ocsp, issuerURL                              string

	number, thisUpdate, nextUpdate string
	nextUpdateIn                   time.Duration
	revoked                        string

	data     string
	detached bool

	responses, nonce string

	tbs string

	digest, hash string
	pss          bool
}

func (f *signFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&f.slotID, "slot-id", "", "sign with this slot, <hsm-id>/<slot>")
	fs.StringVar(&f.caID, "ca-id", "", "sign with whichever device holds this CA key (published on <root>/ca/<ca-id>/sign)")
	fs.StringVar(&f.kind, "kind", "", "certificate, crl, cms, ocsp, tbs_certificate or digest")

	fs.StringVar(&f.csr, "csr", "", "certificate: the CSR, PEM `FILE`")
	fs.StringVar(&f.profile, "profile", "", "certificate: the profile as JSON `FILE`; flags override its fields")
	fs.StringVar(&f.validity, "validity", "", "certificate: validity as a Go duration (2160h)")
	fs.StringVar(&f.notBefore, "not-before", "", "certificate: notBefore, RFC 3339")
	fs.StringVar(&f.notAfter, "not-after", "", "certificate: notAfter, RFC 3339")
	fs.StringVar(&f.serial, "serial", "", "certificate: serial in hex (default: random 128-bit)")
	fs.BoolVar(&f.isCA, "is-ca", false, "certificate: issue a CA certificate")
	fs.IntVar(&f.maxPathLen, "max-path-len", 0, "certificate: path length constraint (with --is-ca)")
	fs.StringVar(&f.keyUsage, "key-usage", "", "certificate: key usages, comma-separated")
	fs.StringVar(&f.extKeyUsage, "ext-key-usage", "", "certificate: extended key usages, comma-separated")
	fs.StringVar(&f.dns, "dns", "", "certificate: DNS names (replace the CSR's)")
	fs.StringVar(&f.ip, "ip", "", "certificate: IP addresses (replace the CSR's)")
	fs.StringVar(&f.email, "email", "", "certificate: email addresses (replace the CSR's)")
	fs.StringVar(&f.uri, "uri", "", "certificate: URIs (replace the CSR's)")
	fs.StringVar(&f.crlDP, "crl-dp", "", "certificate: CRL distribution points")
	fs.StringVar(&f.ocsp, "ocsp", "", "certificate: OCSP server URLs")
	fs.StringVar(&f.issuerURL, "issuer-url", "", "certificate: issuing certificate URLs")

	fs.StringVar(&f.number, "number", "", "crl: CRL number (decimal)")
	fs.StringVar(&f.thisUpdate, "this-update", "", "crl, ocsp: thisUpdate, RFC 3339 (default: the device's now)")
	fs.StringVar(&f.nextUpdate, "next-update", "", "crl, ocsp: nextUpdate, RFC 3339")
	fs.DurationVar(&f.nextUpdateIn, "next-update-in", 0, "crl, ocsp: nextUpdate this long after thisUpdate (or now)")
	fs.StringVar(&f.revoked, "revoked", "", "crl: JSON `FILE`: [{\"serial\", \"revoked_at\", \"reason\"}]")

	fs.StringVar(&f.data, "data", "", "cms: the content to sign, `FILE`")
	fs.BoolVar(&f.detached, "detached", false, "cms: leave the content out of the SignedData")

	fs.StringVar(&f.responses, "responses", "", "ocsp: JSON `FILE`: [{\"serial\", \"status\", \"revoked_at\", \"reason\"}]")
	fs.StringVar(&f.nonce, "nonce", "", "ocsp: nonce in hex")

	fs.StringVar(&f.tbs, "tbs", "", "tbs_certificate: the TBSCertificate, DER `FILE`")

	fs.StringVar(&f.digest, "digest", "", "digest: the digest in hex")
	fs.StringVar(&f.hash, "hash", "", "digest: sha256, sha384 or sha512 (default: from the digest's length)")
	fs.BoolVar(&f.pss, "pss", false, "digest: RSA-PSS instead of PKCS #1 v1.5")
}

func (s *session) cmdSign(args []string) error {
	fs, rf := s.artefactFlags(protocol.CmdSign, signSynopsis)
	var f signFlags
	f.define(fs)
	if err := s.parse(fs, args); err != nil {
		return err
	}
	a, err := s.signArgs(fs, &f)
	if err != nil {
		return err
	}
	topic := "" // the device's command topic
	if a.CAID != "" {
		topic = protocol.Topics{Root: s.opts.root}.CASign(a.CAID)
	}
	reply, err := s.call(protocol.CmdSign, topic, rf, a)
	if err != nil {
		return err
	}
	var res protocol.SignResult
	if err := result(reply, &res); err != nil {
		return err
	}
	by := "slot " + dash(res.SlotID)
	switch a.Kind {
	case protocol.KindCertificate, protocol.KindTBS:
		return s.emit(rf, artefact{text: res.Certificate, summary: "certificate " + certSummary(res.Certificate) + ", signed by " + by})
	case protocol.KindCRL:
		return s.emit(rf, artefact{text: res.CRL, summary: "CRL number " + a.Number.String() + ", signed by " + by})
	case protocol.KindCMS:
		return s.emit(rf, artefact{der: res.CMS, summary: fmt.Sprintf("CMS SignedData, %d bytes DER, signed by %s", len(res.CMS), by)})
	case protocol.KindOCSP:
		return s.emit(rf, artefact{der: res.OCSP, summary: fmt.Sprintf("OCSP response, %d bytes DER, signed by %s", len(res.OCSP), by)})
	default:
		return s.emit(rf, artefact{der: res.Signature, summary: fmt.Sprintf("signature, %d bytes, by %s", len(res.Signature), by)})
	}
}

// signArgs turns the flags into the request's arguments, checking locally what
// can be checked so that a mistyped flag costs no round trip.
func (s *session) signArgs(fs *flag.FlagSet, f *signFlags) (*protocol.SignArgs, error) {
	if (f.slotID == "") == (f.caID == "") {
		return nil, usagef("give exactly one of --slot-id and --ca-id")
	}
	if f.caID != "" && !mqtt.ValidTopicLevel(f.caID) {
		return nil, usagef("--ca-id %q is not a usable topic level", f.caID)
	}
	allowed, ok := kindFlags[f.kind]
	if !ok {
		return nil, usagef("--kind must be one of certificate, crl, cms, ocsp, tbs_certificate, digest")
	}
	var stray []string
	fs.Visit(func(fl *flag.Flag) {
		for _, kf := range kindFlags {
			if contains(kf, fl.Name) && !contains(allowed, fl.Name) {
				stray = append(stray, "--"+fl.Name)
				return
			}
		}
	})
	if len(stray) > 0 {
		sort.Strings(stray)
		return nil, usagef("%s do(es) not apply to --kind %s", strings.Join(stray, ", "), f.kind)
	}

	a := &protocol.SignArgs{SlotID: f.slotID, CAID: f.caID, Kind: f.kind}
	var err error
	switch f.kind {
	case protocol.KindCertificate:
		err = s.certificateArgs(fs, f, a)
	case protocol.KindCRL:
		err = s.crlArgs(f, a)
	case protocol.KindCMS:
		if f.data == "" {
			return nil, usagef("--kind cms needs --data")
		}
		a.Data, err = s.readInput("data", f.data)
		a.Detached = f.detached
	case protocol.KindOCSP:
		err = s.ocspArgs(f, a)
	case protocol.KindTBS:
		if f.tbs == "" {
			return nil, usagef("--kind tbs_certificate needs --tbs")
		}
		a.TBS, err = s.readInput("tbs", f.tbs)
	case protocol.KindDigest:
		err = digestArgs(f, a)
	}
	if err != nil {
		return nil, err
	}
	return a, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func (s *session) certificateArgs(fs *flag.FlagSet, f *signFlags, a *protocol.SignArgs) error {
	if f.csr == "" {
		return usagef("--kind certificate needs --csr")
	}
	var err error
	if a.CSR, err = s.readPEM("csr", f.csr); err != nil {
		return err
	}
	// The device requires a profile, even an empty one: its absence would mean
	// the caller forgot it, not that the defaults are wanted.
	p := &protocol.Profile{}
	if f.profile != "" {
		data, err := s.readInput("profile", f.profile)
		if err != nil {
			return err
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(p); err != nil {
			return usagef("--profile %s: %v", displayName(f.profile), err)
		}
	}
	if f.validity != "" {
		if d, err := time.ParseDuration(f.validity); err != nil || d <= 0 {
			return usagef("--validity %q is not a positive duration such as 2160h", f.validity)
		}
		p.Validity = f.validity
	}
	if p.NotBefore, err = timeFlag("not-before", f.notBefore, p.NotBefore); err != nil {
		return err
	}
	if p.NotAfter, err = timeFlag("not-after", f.notAfter, p.NotAfter); err != nil {
		return err
	}
	if f.serial != "" {
		if _, err := hex.DecodeString(evenHex(strings.TrimPrefix(strings.ToLower(f.serial), "0x"))); err != nil {
			return usagef("--serial %q is not hex", f.serial)
		}
		p.Serial = f.serial
	}
	if isSet(fs, "is-ca") {
		p.IsCA = f.isCA
	}
	if isSet(fs, "max-path-len") {
		if f.maxPathLen < 0 {
			return usagef("--max-path-len must not be negative")
		}
		n := f.maxPathLen
		p.MaxPathLen = &n
	}
	lists := []struct {
		flag string
		dst  *[]string
	}{
		{"key-usage", &p.KeyUsage}, {"ext-key-usage", &p.ExtKeyUsage},
		{"dns", &p.DNSNames}, {"ip", &p.IPAddresses}, {"email", &p.EmailAddresses}, {"uri", &p.URIs},
		{"crl-dp", &p.CRLDistributionPoints}, {"ocsp", &p.OCSPServers}, {"issuer-url", &p.IssuingCertificateURLs},
	}
	for _, l := range lists {
		if isSet(fs, l.flag) {
			*l.dst = splitList(fs.Lookup(l.flag).Value.String())
		}
	}
	// Key usage names and the like are checked by the device, which knows which
	// ones its version supports.
	a.Profile = p
	return nil
}

func evenHex(s string) string {
	if len(s)%2 == 1 {
		return "0" + s
	}
	return s
}

// timeFlag parses an RFC 3339 flag; an absent flag keeps prev.
func timeFlag(name, value string, prev *time.Time) (*time.Time, error) {
	if value == "" {
		return prev, nil
	}
	t, err := time.Parse(time.RFC3339, value)
	if err != nil {
		return nil, usagef("--%s %q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", name, value)
	}
	t = t.UTC()
	return &t, nil
}

// updateTimes fills this_update and next_update for crl and ocsp.
func updateTimes(f *signFlags, a *protocol.SignArgs) error {
	var err error
	if a.ThisUpdate, err = timeFlag("this-update", f.thisUpdate, nil); err != nil {
		return err
	}
	switch {
	case f.nextUpdate != "" && f.nextUpdateIn != 0:
		return usagef("give --next-update or --next-update-in, not both")
	case f.nextUpdate != "":
		a.NextUpdate, err = timeFlag("next-update", f.nextUpdate, nil)
		return err
	case f.nextUpdateIn > 0:
		base := time.Now().UTC().Truncate(time.Second)
		if a.ThisUpdate != nil {
			base = *a.ThisUpdate
		}
		next := base.Add(f.nextUpdateIn)
		a.NextUpdate = &next
		return nil
	case f.nextUpdateIn < 0:
		return usagef("--next-update-in must be positive")
	}
	return usagef("--kind %s needs --next-update or --next-update-in", a.Kind)
}

func (s *session) crlArgs(f *signFlags, a *protocol.SignArgs) error {
	if f.number == "" {
		return usagef("--kind crl needs --number")
	}
	// Checked here because json.Number is written verbatim: anything but digits
	// would make the whole request invalid JSON.
	if n, ok := new(big.Int).SetString(f.number, 10); !ok || n.Sign() <= 0 {
		return usagef("--number %q is not a positive decimal integer", f.number)
	}
	a.Number = json.Number(f.number)
	if err := updateTimes(f, a); err != nil {
		return err
	}
	if f.revoked != "" {
		return s.jsonFile("revoked", f.revoked, &a.Revoked)
	}
	return nil
}

func (s *session) ocspArgs(f *signFlags, a *protocol.SignArgs) error {
	if f.responses == "" {
		return usagef("--kind ocsp needs --responses")
	}
	if err := s.jsonFile("responses", f.responses, &a.Responses); err != nil {
		return err
	}
	if err := updateTimes(f, a); err != nil {
		return err
	}
	if f.nonce != "" {
		var err error
		if a.Nonce, err = hex.DecodeString(f.nonce); err != nil || len(a.Nonce) == 0 {
			return usagef("--nonce is not hex")
		}
	}
	return nil
}

// jsonFile decodes a JSON flag file strictly, so a misspelt field is an error here
// and not a silently missing value.
func (s *session) jsonFile(flagName, path string, v any) error {
	data, err := s.readInput(flagName, path)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return usagef("--%s %s: %s", flagName, displayName(path), jsonProblem(err))
	}
	return nil
}

// jsonProblem says what is wrong in a JSON input file in the file's terms, not in Go
// layouts and types.
func jsonProblem(err error) string {
	var te *time.ParseError
	var ut *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te):
		return fmt.Sprintf("%q is not a time: write it in RFC 3339 with a time and zone, such as "+
			"\"2026-01-31T00:00:00Z\"", te.Value)
	case errors.As(err, &ut):
		return fmt.Sprintf("%s: a JSON %s where a %s belongs", ut.Field, ut.Value, jsonKind(ut.Type.Kind().String()))
	}
	return err.Error()
}

func jsonKind(goKind string) string {
	switch {
	case strings.HasPrefix(goKind, "int"), strings.HasPrefix(goKind, "uint"), strings.HasPrefix(goKind, "float"):
		return "number"
	case goKind == "slice" || goKind == "array":
		return "list"
	case goKind == "struct" || goKind == "map":
		return "object"
	}
	return goKind
}

func digestArgs(f *signFlags, a *protocol.SignArgs) error {
	if f.digest == "" {
		return usagef("--kind digest needs --digest")
	}
	var err error
	if a.Digest, err = hex.DecodeString(f.digest); err != nil || len(a.Digest) == 0 {
		return usagef("--digest is not hex")
	}
	a.Hash, a.PSS = f.hash, f.pss
	if a.Hash == "" {
		switch len(a.Digest) {
		case 32:
			a.Hash = "sha256"
		case 48:
			a.Hash = "sha384"
		case 64:
			a.Hash = "sha512"
		default:
			return usagef("a %d-byte digest is no SHA-2 digest; give --hash", len(a.Digest))
		}
	}
	return nil
}
