package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/hsm"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// fakeTransport is a broker session that is always up and records what is published.
type fakeTransport struct {
	mu  sync.Mutex
	out map[string][][]byte
}

func (f *fakeTransport) Publish(_ context.Context, topic string, payload []byte, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.out == nil {
		f.out = map[string][][]byte{}
	}
	f.out[topic] = append(f.out[topic], append([]byte(nil), payload...))
	return nil
}
func (f *fakeTransport) Subscribe(string, func(string, []byte)) error { return nil }
func (f *fakeTransport) Unsubscribe(string) error                     { return nil }
func (f *fakeTransport) Connected() bool                              { return true }

// reply waits for the reply to id on the default reply topic.
func (f *fakeTransport) reply(t *testing.T, d *Device, id string) protocol.Reply {
	t.Helper()
	return f.repliesN(t, d, id, 1)[0]
}

// repliesN waits until n replies to id are on the default reply topic.
func (f *fakeTransport) repliesN(t *testing.T, d *Device, id string, n int) []protocol.Reply {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got []protocol.Reply
	for time.Now().Before(deadline) {
		got = f.repliesTo(d, id)
		if len(got) >= n {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%d replies to %s, want %d", len(got), id, n)
	return nil
}

// repliesTo is what was published on the default reply topic for id so far.
func (f *fakeTransport) repliesTo(d *Device, id string) []protocol.Reply {
	f.mu.Lock()
	defer f.mu.Unlock()
	var got []protocol.Reply
	for _, m := range f.out[d.Topics().Reply()] {
		var r protocol.Reply
		if json.Unmarshal(m, &r) == nil && r.ID == id {
			got = append(got, r)
		}
	}
	return got
}

func request(d *Device, cmd, id string, args string) {
	if args == "" {
		args = "{}"
	}
	d.Handle(d.Topics().Cmd(cmd), []byte(fmt.Sprintf(`{"id":%q,"args":%s}`, id, args)))
}

func TestReloadAndRestartCommands(t *testing.T) {
	var reloads, restarts atomic.Int32
	d, tr, _ := startDevice(t, Options{
		Reload: func(ctx context.Context) (any, error) {
			reloads.Add(1)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return map[string]any{"applied": []string{"log_level"}}, nil
		},
		Restart: func() { restarts.Add(1) },
	})
	request(d, protocol.CmdReload, "r1", "")
	if r := tr.reply(t, d, "r1"); !r.OK || !strings.Contains(string(r.Result), "log_level") {
		t.Errorf("reload: %+v %s", r.Error, r.Result)
	}
	request(d, protocol.CmdReload, "r2", `{"force":true}`)
	if r := tr.reply(t, d, "r2"); r.OK || r.Error.Code != protocol.CodeBadRequest {
		t.Errorf("reload with arguments: %+v, want bad_request", r.Error)
	}
	request(d, protocol.CmdRestart, "r3", "")
	if r := tr.reply(t, d, "r3"); !r.OK || string(r.Result) != `{"restarting":true}` {
		t.Errorf("restart: %+v %s", r.Error, r.Result)
	}
	// A redelivered restart gets the cached reply and does not restart again. The
	// hook runs before its job's reply, so once both replies are out the count is
	// final.
	request(d, protocol.CmdRestart, "r3", "")
	if r := tr.repliesN(t, d, "r3", 2)[1]; !r.Replayed || string(r.Result) != `{"restarting":true}` {
		t.Errorf("redelivered restart: %+v %s, want the cached reply, marked replayed", r.Error, r.Result)
	}
	if n := reloads.Load(); n != 1 {
		t.Errorf("reload hook called %d times, want once (the refused reload must not run)", n)
	}
	if n := restarts.Load(); n != 1 {
		t.Errorf("restart hook called %d times, want once", n)
	}
}

func TestReloadRejected(t *testing.T) {
	d, tr, _ := startDevice(t, Options{Reload: func(context.Context) (any, error) {
		return nil, fmt.Errorf("%w: invalid configuration: toml: line 1: expected value", ErrBadRequest)
	}})
	request(d, protocol.CmdReload, "r1", "")
	r := tr.reply(t, d, "r1")
	if r.OK || r.Error.Code != protocol.CodeBadRequest || !strings.Contains(r.Error.Message, "toml: line 1") {
		t.Errorf("rejected reload: %+v, want bad_request with the parse error", r.Error)
	}
}

func TestLifecycleUnhooked(t *testing.T) {
	d, tr, _ := startDevice(t, Options{})
	for _, cmd := range []string{protocol.CmdReload, protocol.CmdRestart} {
		request(d, cmd, cmd, "")
		if r := tr.reply(t, d, cmd); r.OK || r.Error.Code != protocol.CodeUnsupported {
			t.Errorf("%s without a runtime: %+v, want unsupported", cmd, r.Error)
		}
	}
}

func TestOnChange(t *testing.T) {
	got := make(chan protocol.Status, 10)
	d, _, r := startDevice(t, Options{OnChange: func(st protocol.Status) { got <- st }})
	d.PublishStatus()
	select {
	case st := <-got:
		if len(st.HSMs) != 1 || st.HSMs[0].ID != r.hsmID {
			t.Errorf("OnChange got %+v", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnChange not called")
	}
}

// TestHealthyAndShutdown wedges the worker of a token with a job that ignores its
// context, as a token call that never returns would.
func TestHealthyAndShutdown(t *testing.T) {
	d, tr, r := startDevice(t, Options{})
	if err := d.Healthy(time.Second); err != nil {
		t.Fatalf("idle device: %v", err)
	}
	release := make(chan struct{})
	defer close(release)
	stuck := &job{cmd: "test.stuck", req: protocol.Request{ID: "stuck"}, deadline: 50 * time.Millisecond,
		run: func(context.Context, *job) (any, error) { <-release; return nil, nil }}
	d.enqueue(r.hsmID, stuck)
	queued := &job{cmd: "test.queued", req: protocol.Request{ID: "queued"}, deadline: time.Second,
		run: func(context.Context, *job) (any, error) { return "ran", nil }}
	d.enqueue(r.hsmID, queued)

	time.Sleep(20 * time.Millisecond)
	if err := d.Healthy(100 * time.Millisecond); err != nil {
		t.Fatalf("within its deadline: %v", err)
	}
	time.Sleep(150 * time.Millisecond)
	err := d.Healthy(100 * time.Millisecond)
	if !errors.Is(err, ErrWedged) || !strings.Contains(err.Error(), r.hsmID) || !strings.Contains(err.Error(), "test.stuck") {
		t.Fatalf("past deadline + grace: %v, want ErrWedged naming the token and the command", err)
	}

	start := time.Now()
	if d.Shutdown(300 * time.Millisecond) {
		t.Error("Shutdown reported clean with a wedged worker")
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Shutdown took %v with a 300ms bound", took)
	}
	if rep := tr.reply(t, d, "stuck"); rep.Error == nil || rep.Error.Code != protocol.CodeHSMOffline {
		t.Errorf("the stuck request: %+v, want hsm_offline", rep.Error)
	}
	if rep := tr.reply(t, d, "queued"); rep.Error == nil || rep.Error.Code != protocol.CodeBusy {
		t.Errorf("the queued request: %+v, want busy (not run)", rep.Error)
	}
	// Handle takes nothing once stopping: neither counted nor answered, whether the
	// request would run, be refused or be dropped.
	before := d.Status().Counters
	request(d, protocol.CmdStatus, "late", "")
	request(d, protocol.CmdReload, "late-bad", `{"force":true}`)
	d.Handle(d.Topics().Cmd(protocol.CmdStatus), []byte("not json"))
	if after := d.Status().Counters; after != before {
		t.Errorf("counters %+v after the shutdown began, were %+v: requests were taken", after, before)
	}
	for _, id := range []string{"late", "late-bad"} {
		if got := tr.repliesTo(d, id); len(got) != 0 {
			t.Errorf("%s was answered after the shutdown began: %+v", id, got)
		}
	}
}

func TestShutdownClean(t *testing.T) {
	d, _, _ := startDevice(t, Options{})
	if !d.Shutdown(5 * time.Second) {
		t.Error("an idle device did not shut down cleanly")
	}
}

func TestOnSign(t *testing.T) {
	type call struct {
		slot string
		code string
	}
	var calls []call
	d := &Device{opts: Options{OnSign: func(slotID string, e *protocol.Error) {
		c := call{slot: slotID}
		if e != nil {
			c.code = e.Code
		}
		calls = append(calls, c)
	}}}
	d.signed("tok/01", nil)
	d.signed("tok/01", fmt.Errorf("signing: %w", hsm.ErrOffline))
	d.signed("tok/02", fmt.Errorf("%w: csr", ErrBadRequest))
	want := []call{{"tok/01", ""}, {"tok/01", protocol.CodeHSMOffline}, {"tok/02", protocol.CodeBadRequest}}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Errorf("OnSign calls %v, want %v", calls, want)
	}
	(&Device{}).signed("tok/01", nil) // no hook: nothing happens
}
