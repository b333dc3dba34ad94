// Package device is the appliance core behind the MQTT command API
// (docs/protocol.md): it takes requests from the broker session, runs them on the
// HSMs, and publishes replies, the retained status and events.
//
// A request flows through it like this:
//
//   - Intake (Handle, dispatch.go) runs on the transport's goroutine and never
//     blocks. It authenticates a signed request, decodes the envelope, checks
//     expires_at, answers a repeated id from the reply cache or the requests in
//     flight, and routes the command by its entry in the command table
//     (commands.go): the entry decodes and checks the arguments, resolves the HSM,
//     slot or CA slot, and sets the handler. Whatever fails here is answered at once
//     through the outbox; refusals of unauthenticated or stale requests are sampled
//     into the audit trail (refusals.go).
//   - Each HSM has one worker with a bounded queue (a full one answers busy), and
//     commands that touch no token run on the control worker. The worker stores an
//     intent for commands that change state, then runs the handler under the
//     command's deadline.
//   - A finisher per worker commits finished jobs in batches: audit records first,
//     then the reply cache (audited commands only), then the replies, published
//     together. Nothing leaves unrecorded, and a redelivery always finds its request
//     in flight or in the cache.
//   - The status document is republished on every change of a slot, of an HSM's
//     presence (watched by polling and hotplug) and of the broker session; slot and
//     presence changes are also events. The CA signing topics follow the
//     provisioned slots.
//
// The slot lifecycle and the HSM registry are package device/slots; what the last
// stop left behind (intents, lost replies) is settled at Start by package
// device/recovery.
package device
