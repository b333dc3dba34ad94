package device

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// RestartResult is the reply to restart, sent before the daemon goes.
type RestartResult struct {
	Restarting bool `json:"restarting"`
}

// routeLifecycle routes reload and restart to the control worker. Both take no
// arguments; both run only what the runtime hooked in (Options.Reload, Restart).
func (d *Device) routeLifecycle(j *job) (string, *protocol.Error) {
	var none struct{}
	if e := protocol.DecodeArgs(j.req.Args, &none); e != nil {
		return "", e
	}
	switch {
	case j.cmd == protocol.CmdReload && d.opts.Reload != nil:
		j.run = func(ctx context.Context, _ *job) (any, error) { return d.opts.Reload(ctx) }
	case j.cmd == protocol.CmdRestart && d.opts.Restart != nil:
		// The hook only asks for the shutdown; the shutdown waits for this worker,
		// so the reply (cached first: a redelivered restart does not restart
		// again) is published before the daemon goes.
		j.run = func(context.Context, *job) (any, error) {
			d.opts.Restart()
			return RestartResult{Restarting: true}, nil
		}
	default:
		return "", protocol.Errorf(protocol.CodeUnsupported, "%s is not available here", j.cmd)
	}
	return "", nil
}

// Reloaded takes in what a reload changed: cached issuers are dropped (the tokens
// behind their signers may have been reopened), the HSMs are rescanned, the CA
// topics follow the slots, and the status is published. The broker session and the
// slots' state are untouched.
func (d *Device) Reloaded() {
	d.mu.Lock()
	d.issuers = map[string]*issuerCache{}
	d.mu.Unlock()
	d.CheckPresence()
	d.syncSubscriptions()
	d.PublishStatus()
}

// Shutdown stops taking requests and waits up to bound for the running ones to
// finish; requests still queued are answered busy without running. What is still
// running after bound (a token that does not answer) is answered hsm_offline and left
// behind, and Shutdown returns false: the caller must not close the HSMs under a call
// that is still inside one.
func (d *Device) Shutdown(bound time.Duration) bool {
	workers := d.snapshotWorkers()
	stopped := make(chan struct{})
	go func() {
		d.Stop()
		close(stopped)
	}()
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-stopped:
		return true
	case <-t.C:
	}
	for _, w := range workers {
		if a := w.live.current(); a != nil && a.job != nil {
			slog.Error("request still running at shutdown; answered hsm_offline", "hsm", nameOr(w.id, "the device"),
				"cmd", a.job.cmd, "id", a.job.req.ID, "running", time.Since(a.since).Round(time.Millisecond))
			d.replyDirect(a.job, protocol.Errorf(protocol.CodeHSMOffline, "%s did not answer before the appliance stopped; retry", nameOr(w.id, "the device")))
		}
		for drained := false; !drained; {
			select {
			case j, ok := <-w.queue:
				if !ok {
					drained = true
					break
				}
				d.refuseStopping(j)
			default:
				drained = true
			}
		}
	}
	return false
}

// refuseStopping answers a request that was queued when the shutdown began. busy is
// not cached, so the same request runs when it is sent again.
func (d *Device) refuseStopping(j *job) {
	d.replyDirect(j, protocol.Errorf(protocol.CodeBusy, "the appliance is shutting down; retry later"))
}

// replyDirect answers a job that will not run (or not finish), to it and to its
// redeliveries, publishing at once: the outbox has stopped with the device.
func (d *Device) replyDirect(j *job, e *protocol.Error) {
	d.errors.Add(1)
	topics := append([]string{d.replyTopic(j.req)}, d.done(j)...)
	out, _ := json.Marshal(protocol.Reply{ID: j.req.ID, Cmd: j.cmd, Error: e})
	for _, topic := range topics {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := d.tr.Publish(ctx, topic, out, false); err != nil {
			slog.Warn("reply at shutdown not published", "id", j.req.ID, "err", err)
		}
		cancel()
	}
}

// changed hands a published status to the runtime (LEDs, systemd STATUS).
func (d *Device) changed(st protocol.Status) {
	if d.opts.OnChange != nil {
		d.opts.OnChange(st)
	}
}

// signed tells the runtime of a signature attempt on a slot.
func (d *Device) signed(slotID string, err error) {
	if d.opts.OnSign == nil {
		return
	}
	var pe *protocol.Error
	if err != nil {
		pe = toProtocolError(err)
	}
	d.opts.OnSign(slotID, pe)
}
