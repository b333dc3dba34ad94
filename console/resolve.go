package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// Sentinels of the name resolver and of the answers the console gives itself from
// the retained status documents, without waiting for a device that cannot answer.
var (
	ErrNotFound  = errors.New("not_found")
	ErrAmbiguous = errors.New("ambiguous")
	ErrOffline   = errors.New("offline")
)

func notFoundf(format string, args ...any) error {
	return &exitError{code: exitFailed, msg: "not_found: " + fmt.Sprintf(format, args...), err: ErrNotFound}
}

func ambiguousf(format string, args ...any) error {
	return &exitError{code: exitUsage, msg: fmt.Sprintf(format, args...), err: ErrAmbiguous}
}

func offlinef(format string, args ...any) error {
	return &exitError{code: exitUnreachable, msg: "offline: " + fmt.Sprintf(format, args...), err: ErrOffline}
}

// syncRetained returns once the broker has delivered the retained messages of the
// subscriptions made before: it publishes a marker on the console's own reply topic
// and waits for it, since a broker hands one client's messages out in order. wait
// bounds it, for a broker whose ACL drops the marker.
func (s *session) syncRetained(cn *conn, wait time.Duration) {
	marker := "sync-" + randomHex(8)
	back := make(chan struct{}, 1)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err := cn.client.Subscribe(cn.replyTopic, func(_ string, payload []byte) {
		var r struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(payload, &r) == nil && r.ID == marker {
			select {
			case back <- struct{}{}:
			default:
			}
		}
	})
	if err == nil {
		payload, _ := json.Marshal(struct {
			ID string `json:"id"`
		}{marker})
		err = cn.client.Publish(ctx, cn.replyTopic, payload, false)
	}
	if err != nil {
		<-ctx.Done()
		return
	}
	select {
	case <-back:
	case <-ctx.Done():
	}
}

// retained returns the retained status documents, read once per invocation.
func (s *session) retained(cn *conn) ([]seenDevice, error) {
	if s.seenRead {
		return s.seen, nil
	}
	seen, err := s.statuses(cn, discoveryWait, true)
	if err != nil {
		return nil, err
	}
	s.seen, s.seenRead = seen, true
	return seen, nil
}

// resolveTarget turns the short names in args into full ones and picks the topic:
// the CA topic of a sign by ca_id, else the device's command topic. A device, HSM or
// CA that the retained status documents show to be unknown or offline is answered
// here at once rather than after the whole timeout. Without any status document (a
// broker whose ACL hides them) names are passed on as given.
func (s *session) resolveTarget(cn *conn, cmd, topic string, args any) (any, string, error) {
	if sa, ok := args.(*protocol.SignArgs); ok && sa.CAID != "" {
		id, err := s.resolveCAID(cn, sa.CAID)
		if err != nil {
			return nil, "", err
		}
		c := *sa
		c.CAID = id
		return &c, protocol.Topics{Root: s.opts.root}.CASign(id), nil
	}
	if topic != "" {
		return args, topic, nil
	}
	dev, st, err := s.targetDevice(cn)
	if err != nil {
		return nil, "", err
	}
	topic = protocol.Topics{Root: s.opts.root, Device: dev}.Cmd(cmd)
	if st == nil {
		return args, topic, nil
	}
	args, err = resolveArgs(hsmsOfStatus(st), args)
	return args, topic, err
}

// targetDevice resolves the device and returns its status document, nil when no
// document can be read at all.
func (s *session) targetDevice(cn *conn) (string, *protocol.Status, error) {
	dev, err := s.resolveDevice(cn)
	if err != nil {
		return "", nil, err
	}
	seen, err := s.retained(cn)
	if err != nil || len(seen) == 0 {
		return dev, nil, err
	}
	for _, d := range seen {
		if d.id != dev {
			continue
		}
		if !d.status.Online {
			return "", nil, offlinef("device %s is offline (its retained status, %s)", dev, stamp(d.status.Time))
		}
		return dev, &d.status, nil
	}
	return "", nil, notFoundf("no device %q under %s; seen: %s", dev, protocol.StatusFilter(s.opts.root), deviceList(seen))
}

func deviceList(seen []seenDevice) string {
	var out []string
	for _, d := range seen {
		state := "offline"
		if d.status.Online {
			state = "online"
		}
		out = append(out, d.id+" ("+state+")")
	}
	return strings.Join(out, ", ")
}

// resolveArgs resolves the HSM and slot id fields of a request's arguments.
func resolveArgs(hsms []hsmName, args any) (any, error) {
	var err error
	switch a := args.(type) {
	case protocol.HSMSetPINArgs:
		a.HSM, err = resolveHSM(hsms, a.HSM)
		return a, err
	case protocol.ProvisionArgs:
		a.HSM, err = resolveHSM(hsms, a.HSM)
		return a, err
	case protocol.ProvisioningCertArgs:
		a.SlotID, err = resolveSlotID(hsms, a.SlotID)
		return a, err
	case protocol.ImportCertArgs:
		a.SlotID, err = resolveSlotID(hsms, a.SlotID)
		return a, err
	case protocol.SlotIDArgs:
		a.SlotID, err = resolveSlotID(hsms, a.SlotID)
		return a, err
	case protocol.ClearArgs:
		a.SlotID, err = resolveSlotID(hsms, a.SlotID)
		return a, err
	case *protocol.SignArgs:
		c := *a
		c.SlotID, err = resolveSlotID(hsms, a.SlotID)
		return &c, err
	}
	return args, nil
}

// hsmName is what an HSM may be called by: its id, and its model and serial when
// hsm.list told them.
type hsmName struct {
	id, kind, model, serial string
}

func hsmsOfStatus(st *protocol.Status) []hsmName {
	out := make([]hsmName, 0, len(st.HSMs))
	for _, h := range st.HSMs {
		out = append(out, hsmName{id: h.ID, kind: h.Kind})
	}
	return out
}

func hsmsOfList(res protocol.HSMListResult) []hsmName {
	out := make([]hsmName, 0, len(res.HSMs))
	for _, h := range res.HSMs {
		out = append(out, hsmName{id: h.ID, kind: h.Kind, model: h.Model, serial: h.Serial})
	}
	return out
}

// resolveHSM finds the one HSM name stands for: its id; its number in the list
// (from 1); its serial, model or kind when only one HSM has it; or a prefix of its id,
// with or without the kind (pkcs11-4c8b or 4c8b), that no other id starts with.
func resolveHSM(hsms []hsmName, name string) (string, error) {
	if name == "" || len(hsms) == 0 {
		return name, nil
	}
	for _, h := range hsms {
		if h.id == name {
			return name, nil
		}
	}
	if n, err := strconv.Atoi(name); err == nil && n >= 1 && n <= len(hsms) {
		return hsms[n-1].id, nil
	}
	ids := make([]string, 0, len(hsms))
	for _, h := range hsms {
		ids = append(ids, h.id)
	}
	tests := []func(h hsmName) bool{
		func(h hsmName) bool { return strings.EqualFold(h.serial, name) && h.serial != "" },
		func(h hsmName) bool { return strings.EqualFold(h.model, name) && h.model != "" },
		func(h hsmName) bool { return strings.EqualFold(h.kind, name) },
		func(h hsmName) bool {
			_, bare, _ := strings.Cut(h.id, "-")
			return strings.HasPrefix(h.id, name) || strings.HasPrefix(bare, strings.ToLower(name))
		},
	}
	for _, match := range tests {
		var found []string
		for _, h := range hsms {
			if match(h) {
				found = append(found, h.id)
			}
		}
		switch {
		case len(found) == 1:
			return found[0], nil
		case len(found) > 1:
			return "", ambiguousf("HSM %q is ambiguous: it could be %s", name, strings.Join(found, ", "))
		}
	}
	return "", notFoundf("no HSM %q on this device; its HSMs: %s", name, strings.Join(ids, ", "))
}

// resolveSlotID resolves the HSM part of <hsm>/<slot>.
func resolveSlotID(hsms []hsmName, slotID string) (string, error) {
	h, slot, ok := strings.Cut(slotID, "/")
	if !ok || h == "" || slot == "" {
		return slotID, nil // the device explains what a slot id is
	}
	full, err := resolveHSM(hsms, h)
	if err != nil {
		return "", err
	}
	return full + "/" + slot, nil
}

var hexRE = regexp.MustCompile(`^[0-9a-f]+$`)

// minCAIDPrefix keeps a short ca_id from matching by accident, as git's short
// hashes do.
const minCAIDPrefix = 4

// caHolder is a slot holding a CA key, as a status document shows it.
type caHolder struct {
	caID, device, slotID, subject string
	usable                        bool // the device is online and the slot connected
}

// resolveCAID expands a ca_id prefix and answers at once for a CA that no device
// holds or whose holders are all offline.
func (s *session) resolveCAID(cn *conn, name string) (string, error) {
	name = strings.ToLower(name)
	if !hexRE.MatchString(name) || len(name) > 64 {
		return "", usagef("--ca-id %q is not hex (a CA id is the SHA-256 of its key, 64 hex digits, or its start)", name)
	}
	seen, err := s.retained(cn)
	if err != nil {
		return "", err
	}
	if len(seen) == 0 {
		if len(name) < 64 {
			return "", usagef("--ca-id %s is short, and no status document can be read to expand it", name)
		}
		return name, nil
	}
	if len(name) < minCAIDPrefix {
		return "", usagef("--ca-id %s is too short: give at least %d hex digits", name, minCAIDPrefix)
	}
	byID := map[string][]caHolder{}
	for _, h := range caHolders(seen) {
		if strings.HasPrefix(h.caID, name) {
			byID[h.caID] = append(byID[h.caID], h)
		}
	}
	switch len(byID) {
	case 0:
		return "", notFoundf("no device holds a provisioned CA with ca_id %s (devices seen: %s)", name, deviceList(seen))
	case 1:
	default:
		return "", ambiguousf("ca_id %s is ambiguous: it could be %s", name, caCandidates(byID))
	}
	var id string
	var holders []caHolder
	for id, holders = range byID { // its one entry
	}
	for _, h := range holders {
		if h.usable {
			return id, nil
		}
	}
	return "", offlinef("ca_id %s is held by %s, none of them online and connected", short(id), holderList(holders))
}

func caHolders(seen []seenDevice) []caHolder {
	var out []caHolder
	for _, d := range seen {
		for _, sl := range d.status.Slots {
			if sl.CAID == "" || sl.State != "provisioned" {
				continue
			}
			out = append(out, caHolder{caID: sl.CAID, device: d.id, slotID: sl.SlotID, subject: sl.Subject,
				usable: d.status.Online && sl.Connected})
		}
	}
	return out
}

func caCandidates(byID map[string][]caHolder) string {
	var out []string
	for id, holders := range byID {
		out = append(out, fmt.Sprintf("%s (%s, %s)", id, dash(holders[0].subject), holderList(holders)))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func holderList(holders []caHolder) string {
	var out []string
	for _, h := range holders {
		out = append(out, h.device+":"+h.slotID)
	}
	return strings.Join(out, ", ")
}

// short is a ca_id as people read it.
func short(caID string) string {
	if len(caID) > 12 {
		return caID[:12] + "..."
	}
	return caID
}
