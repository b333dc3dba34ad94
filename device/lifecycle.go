package device

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// routeReload runs reload on the control worker: it takes no arguments and runs
// only what the runtime hooked in (Options.Reload).
func (d *Device) routeReload(j *job) (string, *protocol.Error) {
	if e := noArgs(j); e != nil {
		return "", e
	}
	if d.opts.Reload == nil {
		return "", notAvailable(j)
	}
	j.run = func(ctx context.Context, _ *job) (any, error) { return d.opts.Reload(ctx) }
	return "", nil
}

// routeRestart runs restart on the control worker. The hook (Options.Restart) only
// asks for the shutdown; the shutdown waits for this worker, so the reply (cached
// first: a redelivered restart does not restart again) is published before the
// daemon goes.
func (d *Device) routeRestart(j *job) (string, *protocol.Error) {
	if e := noArgs(j); e != nil {
		return "", e
	}
	if d.opts.Restart == nil {
		return "", notAvailable(j)
	}
	j.run = func(context.Context, *job) (any, error) {
		d.opts.Restart()
		return protocol.RestartResult{Restarting: true}, nil
	}
	return "", nil
}

// noArgs refuses arguments to a command that takes none.
func noArgs(j *job) *protocol.Error {
	var none struct{}
	return protocol.DecodeArgs(j.req.Args, &none)
}

func notAvailable(j *job) *protocol.Error {
	return protocol.Errorf(protocol.CodeUnsupported, "%s is not available here", j.cmd)
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
		if d.deliverLocal(topic, out) {
			continue
		}
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
