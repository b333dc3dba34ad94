package protocol

import (
	"encoding/json"
	"time"
)

// Arguments and results of each command, as docs/protocol.md names them.

type HSMSetPINArgs struct {
	HSM           string `json:"hsm"`
	PIN           string `json:"pin"`
	ManagementKey string `json:"management_key,omitempty"`
	SOPIN         string `json:"so_pin,omitempty"`
	Persist       bool   `json:"persist,omitempty"`
	// Force presents the PIN even when the token has one try left, which a wrong
	// PIN would block.
	Force bool `json:"force,omitempty"`
}

type ProvisionArgs struct {
	HSM         string `json:"hsm"`
	Slot        string `json:"slot"`
	Mode        string `json:"mode"`
	KeyType     string `json:"key_type,omitempty"`
	KeyPEM      string `json:"key_pem,omitempty"`
	KeyPassword string `json:"key_password,omitempty"`
	Label       string `json:"label,omitempty"`
	Overwrite   bool   `json:"overwrite,omitempty"`
}

type ProvisionResult struct {
	SlotID      string `json:"slot_id"`
	PublicKey   string `json:"public_key"`
	KeyType     string `json:"key_type"`
	CAID        string `json:"ca_id"`
	Attestation string `json:"attestation,omitempty"`
	Note        string `json:"note,omitempty"`
	// State is key_ready, or provisioned when mode existing found the key's CA
	// certificate on the token.
	State string `json:"state,omitempty"`
}

// ProvisioningCertArgs are the arguments of slot.selfsign and slot.csr.
type ProvisioningCertArgs struct {
	SlotID           string `json:"slot_id"`
	ProvisioningCert string `json:"provisioning_cert"`
}

type CertificateResult struct {
	Certificate string `json:"certificate"`
}

type CSRResult struct {
	CSR string `json:"csr"`
}

type ImportCertArgs struct {
	SlotID      string `json:"slot_id"`
	Certificate string `json:"certificate"`
	Chain       string `json:"chain,omitempty"`
}

type SlotIDArgs struct {
	SlotID string `json:"slot_id"`
}

type ClearArgs struct {
	SlotID     string `json:"slot_id"`
	DestroyKey bool   `json:"destroy_key,omitempty"`
}

// SlotShow is the result of slot.show and of slot.import_cert.
type SlotShow struct {
	SlotID      string     `json:"slot_id"`
	HSM         string     `json:"hsm"`
	State       string     `json:"state"`
	Connected   bool       `json:"connected"`
	KeyType     string     `json:"key_type"`
	Label       string     `json:"label,omitempty"`
	CAID        string     `json:"ca_id"`
	PublicKey   string     `json:"public_key"`
	Certificate string     `json:"certificate,omitempty"`
	Chain       string     `json:"chain,omitempty"`
	CSR         string     `json:"csr,omitempty"`
	Attestation string     `json:"attestation,omitempty"`
	Subject     string     `json:"subject,omitempty"`
	NotAfter    *time.Time `json:"not_after,omitempty"`
	// LastCRLNumber is the last CRL number this appliance signed for the slot's
	// CA, so that the next CRL can take the one after it.
	LastCRLNumber json.Number `json:"last_crl_number,omitempty"`
}

type ClearResult struct {
	SlotID       string `json:"slot_id"`
	State        string `json:"state"`
	KeyDestroyed bool   `json:"key_destroyed"`
}

type HSMListResult struct {
	HSMs []HSM `json:"hsms"`
}

type HSM struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Model   string    `json:"model"`
	Serial  string    `json:"serial"`
	Present bool      `json:"present"`
	PIN     PINStatus `json:"pin"`
	Slots   []HSMSlot `json:"slots"`
	// SlotsError says why slots could not be listed (token absent, no PIN).
	SlotsError string `json:"slots_error,omitempty"`
}

type PINStatus struct {
	Set     bool `json:"set"`
	Retries *int `json:"retries"` // null when the token does not say
}

type HSMSlot struct {
	Slot     string `json:"slot"`
	Occupied bool   `json:"occupied"`
	KeyType  string `json:"key_type,omitempty"`
	Label    string `json:"label,omitempty"`
}

type SetPINResult struct {
	HSM string    `json:"hsm"`
	PIN PINStatus `json:"pin"`
}

// SignArgs is the union of every sign kind's arguments; Kind says which apply.
type SignArgs struct {
	SlotID string `json:"slot_id,omitempty"`
	CAID   string `json:"ca_id,omitempty"`
	Kind   string `json:"kind"`

	// certificate
	CSR     string   `json:"csr,omitempty"`
	Profile *Profile `json:"profile,omitempty"`
	// crl
	Number     json.Number  `json:"number,omitempty"`
	ThisUpdate *time.Time   `json:"this_update,omitempty"`
	NextUpdate *time.Time   `json:"next_update,omitempty"`
	Revoked    []RevokedArg `json:"revoked,omitempty"`
	// cms
	Data     []byte `json:"data,omitempty"`
	Detached bool   `json:"detached,omitempty"`
	// ocsp (this_update, next_update shared with crl)
	Responses []OCSPArg `json:"responses,omitempty"`
	Nonce     []byte    `json:"nonce,omitempty"`
	// tbs_certificate
	TBS []byte `json:"tbs,omitempty"`
	// digest
	Digest []byte `json:"digest,omitempty"`
	Hash   string `json:"hash,omitempty"`
	PSS    bool   `json:"pss,omitempty"`
}

// Sign kinds.
const (
	KindCertificate = "certificate"
	KindCRL         = "crl"
	KindCMS         = "cms"
	KindOCSP        = "ocsp"
	KindTBS         = "tbs_certificate"
	KindDigest      = "digest"
)

type Profile struct {
	NotBefore              *time.Time `json:"not_before,omitempty"`
	NotAfter               *time.Time `json:"not_after,omitempty"`
	Validity               string     `json:"validity,omitempty"` // Go duration
	Serial                 string     `json:"serial,omitempty"`   // hex
	IsCA                   bool       `json:"is_ca,omitempty"`
	MaxPathLen             *int       `json:"max_path_len,omitempty"`
	KeyUsage               []string   `json:"key_usage,omitempty"`
	ExtKeyUsage            []string   `json:"ext_key_usage,omitempty"`
	DNSNames               []string   `json:"dns_names,omitempty"`
	IPAddresses            []string   `json:"ip_addresses,omitempty"`
	EmailAddresses         []string   `json:"email_addresses,omitempty"`
	URIs                   []string   `json:"uris,omitempty"`
	CRLDistributionPoints  []string   `json:"crl_distribution_points,omitempty"`
	OCSPServers            []string   `json:"ocsp_servers,omitempty"`
	IssuingCertificateURLs []string   `json:"issuing_certificate_urls,omitempty"`
}

type RevokedArg struct {
	Serial    string    `json:"serial"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"reason,omitempty"`
}

type OCSPArg struct {
	Serial    string     `json:"serial"`
	Status    string     `json:"status"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	Reason    string     `json:"reason,omitempty"`
}

// SignResult carries the one field of the kind that was asked for.
type SignResult struct {
	SlotID      string `json:"slot_id"`
	Certificate string `json:"certificate,omitempty"`
	Serial      string `json:"serial,omitempty"`
	CRL         string `json:"crl,omitempty"`
	CMS         []byte `json:"cms,omitempty"`
	OCSP        []byte `json:"ocsp,omitempty"`
	Signature   []byte `json:"signature,omitempty"`
}

// Status is the retained status document.
type Status struct {
	Online         bool         `json:"online"`
	Device         string       `json:"device"`
	Version        string       `json:"version,omitempty"`
	StartedAt      *time.Time   `json:"started_at,omitempty"`
	Time           time.Time    `json:"time"`
	Broker         string       `json:"broker,omitempty"`
	ConnectedSlots int          `json:"connected_slots"`
	SlotsTotal     int          `json:"slots_total"`
	HSMs           []StatusHSM  `json:"hsms"`
	Slots          []StatusSlot `json:"slots"`
	Counters       Counters     `json:"counters"`
	// Problems are parts of the configuration that did not come up: a [[pkcs11]]
	// module that does not load or a token URI that matches no token. Absent when
	// there are none.
	Problems []string `json:"problems,omitempty"`
	// Web is the dashboard, when [web] turns it on; absent otherwise.
	Web *StatusWeb `json:"web,omitempty"`
}

// StatusWeb names the dashboard's address and its TLS certificate, so that an
// operator can check what the browser shows before typing a password.
type StatusWeb struct {
	Listen string `json:"listen"`
	TLS    bool   `json:"tls"`
	// Fingerprint is the SHA-256 of the certificate's DER, hex in colon-separated
	// pairs as browsers show it; empty without TLS.
	Fingerprint string `json:"fingerprint,omitempty"`
}

type StatusHSM struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Present bool      `json:"present"`
	PIN     PINStatus `json:"pin"`
}

type StatusSlot struct {
	SlotID    string     `json:"slot_id"`
	State     string     `json:"state"`
	Connected bool       `json:"connected"`
	CAID      string     `json:"ca_id"`
	Subject   string     `json:"subject,omitempty"`
	NotAfter  *time.Time `json:"not_after,omitempty"`
	KeyType   string     `json:"key_type"`
}

type Counters struct {
	Requests   uint64 `json:"requests"`
	Signatures uint64 `json:"signatures"`
	Errors     uint64 `json:"errors"`
	Dropped    uint64 `json:"dropped"`
	// Refused counts requests refused before they were read: not signed by a
	// trusted controller, or stale. The audit trail holds a sample of them.
	Refused uint64 `json:"refused"`
}

// Event is one message on the events topic.
type Event struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"` // slot.state, hsm.present, hsm.absent, broker.takeover
	HSM     string    `json:"hsm,omitempty"`
	SlotID  string    `json:"slot_id,omitempty"`
	State   string    `json:"state,omitempty"`
	Message string    `json:"message,omitempty"`
}

// AuditTailArgs are the arguments of audit.tail.
type AuditTailArgs struct {
	N int `json:"n,omitempty"`
}

// AuditTailResult is the result of audit.tail: the last records, oldest first, and
// the hash of the newest, which an auditor compares with a copy of the trail.
type AuditTailResult struct {
	Records []AuditRecord `json:"records"`
	Head    string        `json:"head"`
}

// AuditRecord is one record of the audit trail (audit.Record on the wire).
type AuditRecord struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id"`
	Requester string    `json:"requester,omitempty"`
	Command   string    `json:"cmd"`
	SlotID    string    `json:"slot_id,omitempty"`
	Kind      string    `json:"kind,omitempty"`
	Subject   string    `json:"subject,omitempty"`
	Serial    string    `json:"serial,omitempty"`
	Digest    string    `json:"digest,omitempty"`
	Result    string    `json:"result"`
	Note      string    `json:"note,omitempty"`
	Prev      string    `json:"prev"`
	Hash      string    `json:"hash"`
}

// OTAUpdateArgs are the arguments of ota.update: where the update is, its SHA-256
// and size as the operator announces them, and the text of its detached minisign
// signature (a .minisig file; required in binary mode).
type OTAUpdateArgs struct {
	URL       string `json:"url"`
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	Signature string `json:"signature,omitempty"`
	// AllowDowngrade lets in an update older than the running version (never one
	// below the minimum version); only a request signed by a trusted controller
	// may carry it.
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
}

// OTA phases, in the order an update goes through them; idle and failed are outside
// an update.
const (
	OTAIdle       = "idle"
	OTADownload   = "download"
	OTAVerify     = "verify"
	OTAInstall    = "install"
	OTAReboot     = "reboot"
	OTATrial      = "trial"
	OTACommitted  = "committed"
	OTARolledBack = "rolled_back"
	OTAFailed     = "failed"
)

// OTAStatus is the result of ota.status and of ota.update (which starts the update
// and answers at once; progress follows on the events topic).
type OTAStatus struct {
	Mode     string     `json:"mode"` // binary, rauc, off
	Version  string     `json:"version"`
	Phase    string     `json:"phase"`
	Percent  int        `json:"percent"`
	URL      string     `json:"url,omitempty"`
	Message  string     `json:"message,omitempty"`
	Error    string     `json:"error,omitempty"`
	Previous string     `json:"previous_version,omitempty"`
	BootSlot string     `json:"boot_slot,omitempty"`
	Updated  *time.Time `json:"updated,omitempty"`
	// ErrorCode classes a refused update: policy_denied for a version refusal
	// (older than the running version or the minimum), bad_request for the others.
	ErrorCode string `json:"error_code,omitempty"`
}

// OTAEvent is an update's progress on the events topic; Type is "ota".
type OTAEvent struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Phase   string    `json:"phase"`
	Percent int       `json:"percent"`
	Message string    `json:"message,omitempty"`
}

// RestartResult is the reply to restart, sent before the daemon goes.
type RestartResult struct {
	Restarting bool `json:"restarting"`
}

// ReloadResult is the reply to the reload command.
type ReloadResult struct {
	// Applied is what changed and took effect.
	Applied []string `json:"applied"`
	// RestartRequired is what changed in the file but runs on until a restart (the
	// broker session, the device's identity and topics, the state directory...).
	RestartRequired []string `json:"restart_required,omitempty"`
	// Problems are parts that did not come up (a PKCS#11 module that does not load);
	// the rest of the reload stands.
	Problems    []string `json:"problems,omitempty"`
	HSMs        int      `json:"hsms"`
	HSMsPresent int      `json:"hsms_present"`
}
