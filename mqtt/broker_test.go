package mqtt

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// connectPacket is an MQTT 3.1.1 CONNECT with a clean session and client id "c".
var connectPacket = []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 1, 'c'}

// TestBrokerCloseWhileClientsChurn closes the embedded broker while clients connect
// and drop. mochi 2.7.9 closes a listener's clients under a read lock that it takes
// twice; a client leaving in between deadlocked Close (mochi-mqtt/server#488), which
// hung a CI run. Close must return whatever the clients do.
func TestBrokerCloseWhileClientsChurn(t *testing.T) {
	for round := 0; round < 150; round++ {
		b, err := StartBroker("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		b.quietGap = 0 // no publishes here; the grace would only slow the rounds
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					c, err := net.DialTimeout("tcp", b.Addr(), time.Second)
					if err != nil {
						continue // closed: keep trying until told to stop
					}
					c.Write(connectPacket)
					c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
					c.Read(make([]byte, 4)) // CONNACK
					c.Close()
				}
			}()
		}
		time.Sleep(20 * time.Millisecond)
		closed := make(chan struct{})
		go func() { b.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close did not return within 10s while clients came and went", round)
		}
		close(stop)
		wg.Wait()
	}
}

// A message published right before Close reaches its subscriber: the daemon's
// offline status is the last thing it publishes before closing its broker.
func TestBrokerCloseDeliversTheLastMessage(t *testing.T) {
	for round := 0; round < 20; round++ {
		b, err := StartBroker("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		sub, pub := newClient(t, b.URL(), "sub"), newClient(t, b.URL(), "pub")
		start(t, sub)
		start(t, pub)
		got := make(chan []byte, 4)
		if err := sub.Subscribe("t/status", func(_ string, p []byte) { got <- p }); err != nil {
			t.Fatal(err)
		}
		publish(t, pub, "t/status", "offline", true)
		pub.Close(100 * time.Millisecond)
		b.Close()
		select {
		case p := <-got:
			if string(p) != "offline" {
				t.Fatalf("round %d: got %q", round, p)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("round %d: the message published before Close never arrived", round)
		}
		sub.Close(100 * time.Millisecond)
	}
}

// The embedded broker authenticates nobody, so it refuses to listen beyond loopback.
func TestBrokerLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "example.com:0", "127.0.0.1"} {
		if b, err := StartBroker(addr); !errors.Is(err, ErrConfig) {
			if b != nil {
				b.Close()
			}
			t.Errorf("StartBroker(%q): %v, want ErrConfig", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "[::1]:0"} {
		b, err := StartBroker(addr)
		if err != nil {
			if addr == "[::1]:0" && !hasIPv6Loopback() {
				continue
			}
			t.Errorf("StartBroker(%q): %v", addr, err)
			continue
		}
		b.Close()
	}
}

func hasIPv6Loopback() bool {
	l, err := net.Listen("tcp", "[::1]:0")
	if err == nil {
		l.Close()
	}
	return err == nil
}
