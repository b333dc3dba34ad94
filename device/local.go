package device

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// localPrefix marks the reply topic of a request made in this process. MQTT refuses
// a NUL in a topic name and protocol.DecodeRequest refuses it in reply_to, so no
// request from the broker can name one.
const localPrefix = "\x00local/"

// WebRequesterPrefix starts the requester of every Exec: the audit trail names the
// dashboard's user, and such a request never counts as signed by a controller.
const WebRequesterPrefix = "web:"

// Exec runs one command for a user of the web dashboard through the intake MQTT
// requests take: the same routing, workers, typed errors, audit records (requester
// "web:<user>") and reply cache. It returns the reply the command would have
// published. The dashboard authenticates its users itself, so [trust] controllers
// does not apply here.
func (d *Device) Exec(ctx context.Context, cmd, user string, args any) (protocol.Reply, error) {
	requester := WebRequesterPrefix + user
	if d.ctx == nil || d.ctx.Err() != nil {
		return protocol.Reply{}, protocol.Errorf(protocol.CodeBusy, "the appliance is not running")
	}
	raw, err := json.Marshal(args)
	if err != nil {
		return protocol.Reply{}, protocol.Errorf(protocol.CodeBadRequest, "arguments: %v", err)
	}
	var id [12]byte
	rand.Read(id[:])
	env, _ := json.Marshal(protocol.Request{ID: "local-" + hex.EncodeToString(id[:]), Args: raw})
	req, perr := protocol.DecodeRequest(env)
	if perr != nil {
		return protocol.Reply{}, perr
	}
	req.ReplyTo = localPrefix + req.ID
	ch := make(chan []byte, 1)
	d.mu.Lock()
	if d.local == nil {
		d.local = map[string]chan []byte{}
	}
	d.local[req.ReplyTo] = ch
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.local, req.ReplyTo)
		d.mu.Unlock()
	}()
	d.requests.Add(1)
	d.intake(cmd, "", req, requester)
	select {
	case out := <-ch:
		var rep protocol.Reply
		if err := json.Unmarshal(out, &rep); err != nil {
			return rep, protocol.Errorf(protocol.CodeInternal, "reading the reply: %v", err)
		}
		return rep, nil
	case <-ctx.Done():
		return protocol.Reply{}, ctx.Err()
	}
}

// deliverLocal hands a reply to the Exec waiting for it; false when topic is not a
// local one. A reply nobody waits for any more is dropped.
func (d *Device) deliverLocal(topic string, payload []byte) bool {
	if !strings.HasPrefix(topic, localPrefix) {
		return false
	}
	d.mu.Lock()
	ch := d.local[topic]
	d.mu.Unlock()
	if ch != nil {
		select {
		case ch <- payload:
		default:
		}
	}
	return true
}
