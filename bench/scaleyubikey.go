package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/iot-hsm/iot-hsm/config"
	"github.com/iot-hsm/iot-hsm/internal/appliance"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
	"github.com/iot-hsm/iot-hsm/internal/vyubikey/pcscdtest"
)

// cardSignTime is the virtual YubiKeys' time per signature, a real card's order
// (a YubiKey 5 takes some 50 to 100 ms for a P-384 signature).
const cardSignTime = 30 * time.Millisecond

// vpcdPorts are vsmartcard's two virtual readers.
var vpcdPorts = []string{"35963", "35964"}

// pluggedCard is a virtual YubiKey in a vpcd reader, holding the reader's lock file
// (the one the tests take) while it is plugged.
type pluggedCard struct {
	card *vyubikey.Card
	lock *os.File
}

func (p pluggedCard) unplug() {
	p.card.Unplug()
	p.lock.Close()
}

// plugVirtualCard connects a fresh virtual YubiKey to the vpcd at port and waits
// until pcscd shows it.
func plugVirtualCard(dir, port string, serial uint32) (pluggedCard, error) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "vyubikey-vpcd-"+port+".lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return pluggedCard{}, err
	}
	for deadline := time.Now().Add(time.Minute); syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			f.Close()
			return pluggedCard{}, fmt.Errorf("the reader on vpcd port %s stays in use by another program", port)
		}
	}
	card, err := vyubikey.New(vyubikey.Config{Serial: serial, StatePath: filepath.Join(dir, fmt.Sprintf("card-%d.json", serial))})
	if err != nil {
		f.Close()
		return pluggedCard{}, err
	}
	done := make(chan error, 1)
	go func() { done <- card.Connect(context.Background(), "localhost:"+port) }()
	if err := pcscdtest.WaitCard(pcscdtest.ReaderName("localhost:"+port), true, 20*time.Second, done); err != nil {
		card.Unplug()
		f.Close()
		return pluggedCard{}, fmt.Errorf("virtual YubiKey on vpcd port %s: %w", port, err)
	}
	return pluggedCard{card: card, lock: f}, nil
}

// apdus is the number of command APDUs the card received.
func apdus(c *vyubikey.Card) uint64 {
	var n uint64
	for ins := range 256 {
		n += c.APDUs(byte(ins))
	}
	return n
}

// yubikeyRows: one appliance with two virtual YubiKeys behind pcscd, each taking
// cardSignTime per signature; the CA key on one card, then on both.
func (b *bench) yubikeyRows(args json.RawMessage, key string) {
	const name = "two virtual YubiKeys"
	if !pcscdtest.Running() {
		b.fail(secScale, name, errors.New("pcscd is not running (make pcscd)"))
		return
	}
	dir := filepath.Join(b.work, "scale-yubikey")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.fail(secScale, name, err)
		return
	}
	var cards []pluggedCard
	defer func() {
		for _, c := range cards {
			c.unplug()
		}
	}()
	for i, port := range vpcdPorts {
		c, err := plugVirtualCard(dir, port, uint32(23450001+i))
		if err != nil {
			b.fail(secScale, name, err)
			return
		}
		cards = append(cards, c)
	}
	a, err := startAppliance(b.mos.URL, "bench-yubikey-"+randomHex(3), dir, nil, func(c *config.Config) {
		c.PKCS11 = nil
		c.YubiKey = config.YubiKey{AllowDefaults: true} // factory PIN and management key: a lab's cards
	})
	if err != nil {
		b.fail(secScale, name, err)
		return
	}
	defer scaleMember{a: a}.stop()
	o, err := newOperator(b.mos.URL)
	if err != nil {
		b.fail(secScale, name, err)
		return
	}
	defer o.close()
	b.measureCards(o, a, cards, args, key)
}

// measureCards provisions the CA on the first card and measures, then on the second
// and measures again, counting the APDUs each signature took.
func (b *bench) measureCards(o *operator, a *appliance.Appliance, cards []pluggedCard, args json.RawMessage, key string) {
	var res [2]loadResult
	var perSig [2]float64
	cert := ""
	for i, c := range cards {
		caID, crt, err := importCASlot(o, scaleMember{a: a, hsmID: fmt.Sprintf("yubikey-%d", 23450001+i)}, "9c", key, cert)
		if err != nil {
			b.fail(secScale, "two virtual YubiKeys", err)
			return
		}
		cert = crt
		c.card.SetSignLatency(cardSignTime)
		var sent uint64
		count := func() uint64 { return apdus(cards[0].card) + apdus(cards[1].card) }
		window := func() func() {
			start := count()
			return func() { sent = count() - start }
		}
		if res[i], err = b.measure(o, caID, args, window); err != nil {
			b.fail(secScale, "two virtual YubiKeys", err)
			return
		}
		if n := res[i].Completed; n > 0 {
			perSig[i] = float64(sent) / float64(n)
		}
	}
	b.scalePair(fmt.Sprintf("one appliance, the CA key on one virtual YubiKey (%s per signature)", cardSignTime),
		"one appliance, the same CA key on two virtual YubiKeys", res[0], res[1], false)
	for i := range 2 {
		r := &b.rows[len(b.rows)-2+i]
		r.Metrics["apdus_per_signature"] = perSig[i]
		r.Note += fmt.Sprintf("; %.2f APDUs per signature on the cards in the window (counted by the virtual YubiKey)", perSig[i])
	}
}
