package mqtttest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// A device answering twice on the request's reply_to: both replies are kept in order
// under the request's id, and what the device publishes on a watched topic is in the
// Inbox.
func TestClientRepliesAndInbox(t *testing.T) {
	b, err := mqtt.StartBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	var dev *mqtt.Client
	dev, err = Connect(t, mqtt.Config{Broker: b.URL(), AllowPlaintext: true, ClientID: "dev"}, map[string]mqtt.Handler{
		"dev/cmd/status": func(_ string, payload []byte) {
			var req protocol.Request
			json.Unmarshal(payload, &req)
			// In order, and off the delivery goroutine.
			go func() {
				for _, ok := range []bool{true, false} {
					out, _ := json.Marshal(protocol.Reply{ID: req.ID, Cmd: "status", OK: ok})
					dev.Publish(context.Background(), req.ReplyTo, out, false)
				}
				dev.Publish(context.Background(), "dev/status", []byte(`{"online":true}`), true)
			}()
		}})
	if err != nil {
		t.Fatal(err)
	}
	c := Start(t, b.URL(), Options{Watch: []string{"dev/status"}})
	first := c.Call("dev/cmd/status", nil, 10*time.Second)
	second, ok := c.Reply(first.ID, 2, 10*time.Second)
	if !ok || !first.OK || second.OK || second.ID != first.ID {
		t.Fatalf("replies %+v, %+v (%v), want ok then not ok under one id", first, second, ok)
	}
	if _, ok := c.Reply(first.ID, 3, 100*time.Millisecond); ok {
		t.Fatal("a third reply that was never sent")
	}
	c.WaitFor(t, "dev/status", `"online":true`)
	if got := c.Topics(); len(got) != 1 || got[0] != "dev/status" {
		t.Errorf("inbox topics %v, want the watched one alone", got)
	}
}
