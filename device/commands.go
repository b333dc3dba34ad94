package device

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/iot-hsm/iot-hsm/ca"
	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/protocol"
	"github.com/iot-hsm/iot-hsm/store"
)

// command is one entry of the command table: everything the intake and the workers
// need to know of a command besides its handler.
type command struct {
	// route decodes and checks the arguments, sets the job's handler (j.run) and
	// what its audit record names, and returns the HSM whose worker runs it (""
	// for the control worker, for commands that touch no token). An error is
	// answered at intake: nothing runs, nothing is cached.
	route func(d *Device, j *job) (hsmID string, e *protocol.Error)
	// deadline bounds the run; zero keeps the default (defaultDeadline).
	deadline time.Duration
	// audited commands are recorded in the audit trail, and only their replies are
	// cached (cacheable): every provisioning action, every signature, and what
	// changes the running software. Reads are neither.
	audited bool
	// journaled commands change the appliance's state (token or slot records): an
	// intent is stored before they run, so that one the appliance stops inside
	// still reaches the audit trail (package recovery). A sign changes nothing and
	// its result leaves only after its audit record, so it needs none.
	journaled bool
}

// defaultDeadline bounds a command's run unless its table entry says otherwise.
const defaultDeadline = 30 * time.Second

// commands is the command table: a new command is one entry here and one route
// function with its handler. It is filled in init because the handlers reach
// Handle (through the CA topics they subscribe), which reads it.
var commands map[string]command

func init() {
	commands = map[string]command{
		protocol.CmdStatus:    {route: (*Device).routeStatus},
		protocol.CmdHSMList:   {route: (*Device).routeHSMList},
		protocol.CmdHSMSetPIN: {route: (*Device).routeSetPIN, audited: true, journaled: true},
		// RSA-4096 generation on a YubiKey takes minutes.
		protocol.CmdSlotProvision: {route: (*Device).routeProvision, deadline: 3 * time.Minute, audited: true, journaled: true},
		protocol.CmdSlotSelfSign:  {route: (*Device).routeSelfSign, audited: true, journaled: true},
		protocol.CmdSlotCSR:       {route: (*Device).routeCSR, audited: true, journaled: true},
		protocol.CmdSlotImport:    {route: (*Device).routeImport, audited: true, journaled: true},
		protocol.CmdSlotShow:      {route: (*Device).routeShow},
		protocol.CmdSlotClear:     {route: (*Device).routeClear, audited: true, journaled: true},
		protocol.CmdSign:          {route: (*Device).routeSign, audited: true},
		protocol.CmdReload:        {route: (*Device).routeReload, audited: true},
		protocol.CmdRestart:       {route: (*Device).routeRestart, audited: true},
		protocol.CmdOTAUpdate:     {route: (*Device).routeOTAUpdate, audited: true},
		protocol.CmdOTAStatus:     {route: (*Device).routeOTAStatus},
		protocol.CmdAuditTail:     {route: (*Device).routeAuditTail},
	}
}

// audited reports whether cmd is recorded in the audit trail.
func audited(cmd string) bool { return commands[cmd].audited }

// journaled reports whether cmd stores an intent before it runs.
func journaled(cmd string) bool { return commands[cmd].journaled }

// route looks the command up in the table and routes the job with its entry.
func (d *Device) route(j *job) (string, *protocol.Error) {
	c, ok := commands[j.cmd]
	if !ok {
		return "", protocol.Errorf(protocol.CodeUnknownCommand, "unknown command %q", j.cmd)
	}
	if c.deadline > 0 {
		j.deadline = c.deadline
	}
	return c.route(d, j)
}

// slotHSM checks that a slot has a record and returns its HSM, so the job runs on
// that token's worker. An unknown slot is answered at intake: workers, cached replies
// and audit records are for requests that can do something, and the HSM ids with a
// slot record are a bounded set that no request can grow.
func (d *Device) slotHSM(slotID string) (string, *protocol.Error) {
	if slotID == "" {
		return "", protocol.Errorf(protocol.CodeBadRequest, "slot_id is required")
	}
	hsmID, _, err := slots.SplitSlotID(slotID)
	if err != nil {
		return "", toProtocolError(err)
	}
	if _, err := d.store.Slot(slotID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return "", protocol.Errorf(protocol.CodeNotFound, "slot %s is not provisioned (slot.provision first; hsm.list shows the HSMs)", slotID)
		}
		return "", toProtocolError(err)
	}
	// The HSM of a slot record may be absent (a YubiKey not plugged in since the
	// start); its worker answers hsm_offline, or clears the record.
	return hsmID, nil
}

// knownHSM answers not_found at intake for an HSM id no backend has shown: workers
// exist only for the HSMs the appliance has.
func (d *Device) knownHSM(id string) *protocol.Error {
	if _, err := d.reg.Token(id); err != nil {
		return protocol.Errorf(protocol.CodeNotFound, "no HSM %q on this appliance (hsm.list shows the HSMs)", id)
	}
	return nil
}

func (d *Device) routeStatus(j *job) (string, *protocol.Error) {
	j.run = func(context.Context, *job) (any, error) { return d.Status(), nil }
	return "", nil
}

func (d *Device) routeAuditTail(j *job) (string, *protocol.Error) {
	var a protocol.AuditTailArgs
	if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
		return "", e
	}
	if a.N < 0 || a.N > 256 {
		return "", protocol.Errorf(protocol.CodeBadRequest, "n must be 0..256 (0: all kept in memory)")
	}
	j.run = func(context.Context, *job) (any, error) { return d.auditTail(a.N) }
	return "", nil
}

// auditTail answers audit.tail: the last records with their hash-chain links.
func (d *Device) auditTail(n int) (any, error) {
	if d.opts.Audit == nil {
		return nil, fmt.Errorf("%w: no audit trail on this appliance", hsm.ErrUnsupported)
	}
	res := protocol.AuditTailResult{Records: []protocol.AuditRecord{}, Head: d.opts.Audit.Head().Hash}
	for _, r := range d.opts.Audit.Tail(n) {
		res.Records = append(res.Records, protocol.AuditRecord(r))
	}
	return res, nil
}

// certOf parses a stored certificate PEM.
func certOf(pemText string) (*x509.Certificate, error) {
	return ca.ParseCertificatePEM([]byte(pemText))
}
