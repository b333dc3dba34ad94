package device

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// OTAHooks run the ota commands (the updater lives in the runtime, package ota).
type OTAHooks struct {
	// Update starts an update and returns at once with its status; an error
	// wrapping ErrBadRequest is an update refused, ErrConflict one already running.
	Update func(protocol.OTAUpdateArgs) (any, error)
	// Status is the update's state now.
	Status func() any
}

// routeOTAUpdate runs ota.update on the control worker; without the runtime's hook
// it is unsupported.
func (d *Device) routeOTAUpdate(j *job) (string, *protocol.Error) {
	var a protocol.OTAUpdateArgs
	if e := protocol.DecodeArgs(j.req.Args, &a); e != nil {
		return "", e
	}
	if a.URL == "" || a.SHA256 == "" || a.Size <= 0 {
		return "", protocol.Errorf(protocol.CodeBadRequest, "url, sha256 and size are required")
	}
	if a.AllowDowngrade && !controllerSigned(j.requester) {
		return "", d.refuseDowngrade(j, a)
	}
	if d.opts.OTA.Update == nil {
		return "", otaOff(j)
	}
	j.run = func(context.Context, *job) (any, error) { return d.opts.OTA.Update(a) }
	// Who asked to install what: the trail's digest is the image's SHA-256. The
	// URL goes in without credentials or query (a presigned URL's signature must
	// not live on in the trail, nor be served by audit.tail).
	j.rec.Subject, j.rec.Digest = redactURL(a.URL), a.SHA256
	if a.AllowDowngrade {
		j.rec.Note = "allow_downgrade"
	}
	return "", nil
}

// routeOTAStatus runs ota.status on the control worker; without the runtime's hook
// it is unsupported.
func (d *Device) routeOTAStatus(j *job) (string, *protocol.Error) {
	if e := noArgs(j); e != nil {
		return "", e
	}
	if d.opts.OTA.Status == nil {
		return "", otaOff(j)
	}
	j.run = func(context.Context, *job) (any, error) { return d.opts.OTA.Status(), nil }
	return "", nil
}

func otaOff(j *job) *protocol.Error {
	return protocol.Errorf(protocol.CodeUnsupported, "%s is not available here (ota.mode is off)", j.cmd)
}

// refuseDowngrade answers an allow_downgrade that no trusted controller signed, and
// keeps the attempt in the audit trail.
func (d *Device) refuseDowngrade(j *job, a protocol.OTAUpdateArgs) *protocol.Error {
	e := protocol.Errorf(protocol.CodeUnauthorized,
		"allow_downgrade needs a request signed by a trusted controller ([trust] controllers)")
	if d.opts.Audit != nil {
		rec := audit.Record{RequestID: j.req.ID, Requester: j.requester, Command: j.cmd, Subject: redactURL(a.URL),
			Digest: a.SHA256, Result: e.Code, Note: "allow_downgrade"}
		if _, err := d.opts.Audit.Append(rec); err != nil {
			slog.Error("audit trail", "err", err)
		}
	}
	return e
}

// controllerSigned reports whether the request's signature chains to the
// controllers' bundle: a JWS taken without one is only checked against its own
// certificate, and its requester is marked unverified; a dashboard user is no
// controller.
func controllerSigned(requester string) bool {
	return requester != "" && !strings.HasPrefix(requester, "unverified:") && !strings.HasPrefix(requester, WebRequesterPrefix)
}

// redactURL drops the user information, query and fragment of a URL.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery, u.Fragment, u.RawFragment = nil, "", "", ""
	return u.String()
}

// OTAEvent publishes an update's progress on the events topic. It publishes at once
// rather than through the outbox, which stops with the device: the "reboot" event is
// sent just before the daemon goes. Progress comes in steps of 5%, so this is rare.
func (d *Device) OTAEvent(e protocol.OTAEvent) {
	if d.tr == nil {
		return
	}
	e.Type = "ota"
	out, _ := json.Marshal(e)
	if d.opts.OnEvent != nil {
		d.opts.OnEvent(out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := d.tr.Publish(ctx, d.topics.Events(), out, false); err != nil {
		slog.Warn("ota event not published", "phase", e.Phase, "err", err)
	}
}
