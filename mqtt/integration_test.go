package mqtt

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
)

func TestPublishSubscribe(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b testBroker) {
		sub := newClient(t, b.URL(), "sub")
		in := newInbox()
		if err := sub.Subscribe("t/+/x", in.handle); err != nil {
			t.Fatal(err)
		}
		start(t, sub)
		pub := newClient(t, b.URL(), "pub")
		start(t, pub)

		publish(t, pub, "t/1/x", "hello", false)
		if m := in.next(t); m.topic != "t/1/x" || m.payload != "hello" {
			t.Fatalf("got %+v", m)
		}

		// A retained message reaches a subscriber that arrives later.
		publish(t, pub, "t/status", "online", true)
		late := newClient(t, b.URL(), "late")
		start(t, late)
		lateIn := newInbox()
		if err := late.Subscribe("t/status", lateIn.handle); err != nil {
			t.Fatal(err)
		}
		if m := lateIn.next(t); m.payload != "online" {
			t.Fatalf("late subscriber got %+v", m)
		}
	})
}

func TestUnsubscribe(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b testBroker) {
		p := newProxy(t, b.URL()[len("tcp://"):])
		c := newClient(t, p.URL(), "dev")
		connects := make(chan struct{}, 10)
		c.OnConnect(func() { connects <- struct{}{} })
		in := newInbox()
		for _, f := range []string{"u/a", "u/b", "u/marker"} {
			if err := c.Subscribe(f, in.handle); err != nil {
				t.Fatal(err)
			}
		}
		start(t, c)
		waitFor(t, connects, "OnConnect")
		pub := newClient(t, b.URL(), "pub")
		start(t, pub)

		// Online: the broker is told at once.
		if err := c.Unsubscribe("u/a"); err != nil {
			t.Fatal(err)
		}
		// Offline: the broker keeps the session, subscriptions included, and is
		// told on the next connect.
		p.Drop(true)
		eventually(t, 5*time.Second, "disconnected", func() bool { return !c.Connected() })
		if err := c.Unsubscribe("u/b"); err != nil {
			t.Fatal(err)
		}
		p.Drop(false)
		waitFor(t, connects, "OnConnect after the drop")

		publish(t, pub, "u/a", "1", false)
		publish(t, pub, "u/b", "2", false)
		publish(t, pub, "u/marker", "3", false)
		if m := in.next(t); m.topic != "u/marker" {
			t.Fatalf("got %+v after unsubscribing, want only the marker", m)
		}
		// Not merely dropped on arrival: the broker no longer sends them.
		if n := c.unrouted.Load(); n != 0 {
			t.Fatalf("the broker still sent %d messages for unsubscribed filters", n)
		}
	})
}

func TestLastWill(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b testBroker) {
		watcher := newClient(t, b.URL(), "watcher")
		in := newInbox()
		if err := watcher.Subscribe("x/status", in.handle); err != nil {
			t.Fatal(err)
		}
		start(t, watcher)

		p := newProxy(t, b.URL()[len("tcp://"):])
		dev := newClient(t, p.URL(), "dev", func(c *Config) {
			c.Will = &Message{Topic: "x/status", Payload: []byte(`{"online":false}`), Retained: true}
		})
		start(t, dev)
		publish(t, dev, "x/status", `{"online":true}`, true)
		in.expect(t, "x/status", `{"online":true}`)

		p.Cut() // the device vanishes without a DISCONNECT
		in.expect(t, "x/status", `{"online":false}`)

		// The Will replaced the retained status.
		late := newClient(t, b.URL(), "late")
		lateIn := newInbox()
		if err := late.Subscribe("x/status", lateIn.handle); err != nil {
			t.Fatal(err)
		}
		start(t, late)
		if m := lateIn.next(t); m.payload != `{"online":false}` {
			t.Fatalf("retained status after the Will: %+v", m)
		}
	})
}

func TestBrokerRestart(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b testBroker) {
		c := newClient(t, b.URL(), "dev")
		connects := make(chan struct{}, 10)
		c.OnConnect(func() { connects <- struct{}{} })
		lost := make(chan error, 10)
		c.OnConnectionLost(func(err error) { lost <- err })
		in := newInbox()
		if err := c.Subscribe("r/cmd", in.handle); err != nil {
			t.Fatal(err)
		}
		start(t, c)
		waitFor(t, connects, "first OnConnect")

		b.Stop()
		waitFor(t, lost, "OnConnectionLost")
		eventually(t, 5*time.Second, "disconnected", func() bool { return !c.Connected() })
		b.Start()
		// The broker kept nothing, so only our re-subscription makes this work.
		waitFor(t, connects, "OnConnect after the restart")

		other := newClient(t, b.URL(), "other")
		start(t, other)
		publish(t, other, "r/cmd", "after-restart", false)
		in.expect(t, "r/cmd", "after-restart")
		publish(t, c, "r/cmd", "own", false)
		in.expect(t, "r/cmd", "own")
	})
}

func waitFor[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not within 10s", what)
		var zero T
		return zero
	}
}

func TestSharedSubscription(t *testing.T) {
	const n = 200
	forEachBroker(t, func(t *testing.T, b testBroker) {
		var mu sync.Mutex
		seen := map[string]string{} // payload -> worker
		count := map[string]int{}
		var dups, wrongTopic atomic.Int32
		worker := func(name string) *Client {
			c := newClient(t, b.URL(), name)
			err := c.Subscribe(SharedSubscription("g", "t/sign"), func(topic string, payload []byte) {
				if topic != "t/sign" {
					wrongTopic.Add(1)
				}
				mu.Lock()
				defer mu.Unlock()
				if _, ok := seen[string(payload)]; ok {
					dups.Add(1)
				}
				seen[string(payload)] = name
				count[name]++
			})
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		a, bw := worker("a"), worker("b")
		// A plain subscription next to the shared one keeps its own handler.
		other := newInbox()
		if err := a.Subscribe("t/other", other.handle); err != nil {
			t.Fatal(err)
		}
		start(t, a)
		start(t, bw)

		pub := newClient(t, b.URL(), "pub")
		start(t, pub)
		for i := range n {
			publish(t, pub, "t/sign", fmt.Sprint(i), false)
		}
		publish(t, pub, "t/other", "x", false)
		other.expect(t, "t/other", "x")

		total := func() int {
			mu.Lock()
			defer mu.Unlock()
			return count["a"] + count["b"]
		}
		eventually(t, 5*time.Second, "all messages delivered", func() bool { return total() >= n })
		time.Sleep(200 * time.Millisecond) // let any duplicate arrive
		mu.Lock()
		defer mu.Unlock()
		if total := count["a"] + count["b"]; total != n || len(seen) != n || dups.Load() != 0 {
			t.Errorf("delivered %d (a %d, b %d), %d distinct, %d duplicates; want %d each once", total, count["a"], count["b"], len(seen), dups.Load(), n)
		}
		if count["a"] == 0 || count["b"] == 0 {
			t.Errorf("one worker got nothing: a %d, b %d", count["a"], count["b"])
		}
		if wrongTopic.Load() != 0 {
			t.Errorf("%d messages with a topic other than t/sign", wrongTopic.Load())
		}
	})
}

func TestPublishWhileDown(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b testBroker) {
		t.Run("broker gone", func(t *testing.T) {
			c := newClient(t, b.URL(), "dev")
			start(t, c)
			b.Stop()
			defer b.Start()
			eventually(t, 5*time.Second, "disconnected", func() bool { return !c.Connected() })
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			if err := c.Publish(ctx, "a", []byte("x"), false); !errors.Is(err, ErrNotConnected) {
				t.Fatalf("Publish while down: %v, want ErrNotConnected", err)
			}
		})
		t.Run("broker unreachable", func(t *testing.T) {
			// The connection still looks up, but nothing comes back: the PUBACK wait
			// ends with the context.
			p := newProxy(t, b.URL()[len("tcp://"):])
			c := newClient(t, p.URL(), "dev2")
			start(t, c)
			p.Freeze()
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			began := time.Now()
			err := c.Publish(ctx, "a", []byte("x"), false)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Publish to a frozen broker: %v, want DeadlineExceeded", err)
			}
			if d := time.Since(began); d > time.Second {
				t.Fatalf("Publish took %s with a 300ms deadline", d)
			}
			p.Cut()
		})
	})
}

func TestStartBeforeBroker(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b testBroker) {
		b.Stop()
		c := newClient(t, b.URL(), "dev")
		connects := make(chan struct{}, 10)
		c.OnConnect(func() { connects <- struct{}{} })
		in := newInbox()
		if err := c.Subscribe("s/cmd", in.handle); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if err := c.Start(ctx); err == nil {
			t.Fatal("Start against a dead broker succeeded")
		}
		if c.Connected() {
			t.Fatal("connected to a dead broker")
		}
		b.Start()
		waitFor(t, connects, "connection once the broker is up")
		publish(t, c, "s/cmd", "hi", false)
		in.expect(t, "s/cmd", "hi")
	})
}

func TestStartContextEnds(t *testing.T) {
	m := brokertest.StartMosquitto(t)
	p := newProxy(t, m.URL[len("tcp://"):])
	p.Freeze() // TCP connects, CONNACK never comes
	c := newClient(t, p.URL(), "dev")
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if err := c.Start(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start: %v, want DeadlineExceeded", err)
	}
	began := time.Now()
	c.Close(100 * time.Millisecond)
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("Close took %s during a connection attempt", d)
	}

	// Close also ends a Start that has no deadline of its own.
	c2 := newClient(t, p.URL(), "dev2")
	done := make(chan error, 1)
	go func() { done <- c2.Start(context.Background()) }()
	time.Sleep(100 * time.Millisecond)
	c2.Close(100 * time.Millisecond)
	if err := waitFor(t, done, "Start to return after Close"); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Start after Close: %v", err)
	}
}

// TestNoGoroutineLeak runs a client through connect, traffic, a broker restart, a
// client retrying against a dead broker, and Close, then checks that the goroutine
// count settles back.
func TestNoGoroutineLeak(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b testBroker) {
		dead := fmt.Sprintf("tcp://127.0.0.1:%d", brokertest.FreePort(t))
		cfg := func(url, id string) Config {
			return Config{Broker: url, ClientID: id, AllowPlaintext: true, ConnectTimeout: 3 * time.Second, Logger: testLogger(t)}
		}
		time.Sleep(50 * time.Millisecond)
		before := runtime.NumGoroutine()

		c, err := New(cfg(b.URL(), "dev"))
		if err != nil {
			t.Fatal(err)
		}
		connects := make(chan struct{}, 10)
		c.OnConnect(func() { connects <- struct{}{} })
		in := newInbox()
		if err := c.Subscribe("l/cmd", in.handle); err != nil {
			t.Fatal(err)
		}
		start(t, c)
		waitFor(t, connects, "OnConnect")
		publish(t, c, "l/cmd", "1", false)
		in.expect(t, "l/cmd", "1")
		b.Stop()
		eventually(t, 5*time.Second, "disconnected", func() bool { return !c.Connected() })
		b.Start()
		waitFor(t, connects, "OnConnect after restart")
		publish(t, c, "l/cmd", "2", false)
		in.expect(t, "l/cmd", "2")

		retrying, err := New(cfg(dead, "retrying"))
		if err != nil {
			t.Fatal(err)
		}
		if err := retrying.Start(t.Context()); err == nil {
			t.Fatal("connected to nothing")
		}

		c.Close(100 * time.Millisecond)
		retrying.Close(100 * time.Millisecond)
		settles(t, before)
	})
}

// settles waits for the goroutine count to come back to before (give or take one
// runtime goroutine), and shows every stack when it does not.
func settles(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+1 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEmbeddedBrokerNoLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	b, err := StartBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, b.URL(), "dev")
	in := newInbox()
	if err := c.Subscribe("e/t", in.handle); err != nil {
		t.Fatal(err)
	}
	start(t, c)
	publish(t, c, "e/t", "x", true)
	in.expect(t, "e/t", "x")
	c.Close(100 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	settles(t, before)
}

func TestEmbeddedBrokerAddr(t *testing.T) {
	b, err := StartBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if b.Addr() == "127.0.0.1:0" || b.URL() != "tcp://"+b.Addr() {
		t.Fatalf("Addr %q, URL %q", b.Addr(), b.URL())
	}
	// The address is taken: a second broker there fails.
	if b2, err := StartBroker(b.Addr()); err == nil {
		b2.Close()
		t.Fatal("second broker on the same address started")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}
