package appliance

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/device"
	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/mqtt"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// Two appliances with the same device_id (a cloned SD card) on a real mosquitto:
// the broker.takeover event reaches the events topic and names the cause.
func TestClonedApplianceTakeoverEvent(t *testing.T) {
	m := brokertest.StartMosquitto(t)
	const dev = "ihsm-clone1"
	events := make(chan protocol.Event, 64)
	watcher, err := mqtt.New(mqtt.Config{Broker: m.URL, ClientID: "watcher", AllowPlaintext: true, CleanSession: true})
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close(100 * time.Millisecond)
	if err := watcher.Subscribe("iot-hsm/"+dev+"/events", func(_ string, p []byte) {
		var e protocol.Event
		if json.Unmarshal(p, &e) == nil {
			events <- e
		}
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := watcher.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		startClone(t, m.URL, dev)
	}
	deadline := time.After(60 * time.Second)
	for {
		select {
		case e := <-events:
			if e.Type != device.EventBrokerTakeover {
				continue
			}
			if !strings.Contains(e.Message, "device_id "+dev) || !strings.Contains(e.Message, "cloned SD card") {
				t.Fatalf("takeover event message: %q", e.Message)
			}
			return
		case <-deadline:
			t.Fatal("no broker.takeover event within 60s")
		}
	}
}

func startClone(t *testing.T, url, dev string) {
	t.Helper()
	cfg := config.Default()
	cfg.DeviceID, cfg.StateDir = dev, t.TempDir()
	cfg.MQTT.Broker, cfg.MQTT.AllowPlaintext = url, true
	cfg.Service.BrokerWait = 5 * time.Second
	cfg.Secrets.KeyFile = filepath.Join(t.TempDir(), "secrets.key")
	cfg.YubiKey.Disabled = true
	ctx := context.Background()
	app, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := app.Start(ctx, Hooks{Version: "test"}); err != nil {
		app.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		app.Device.Stop()
		app.Client.Close(100 * time.Millisecond)
		app.Close()
	})
}
