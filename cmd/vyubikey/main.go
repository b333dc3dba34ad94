// Command vyubikey is a virtual YubiKey 5 (PIV) in vsmartcard's virtual reader:
// it connects to vpcd (pcscd's vsmartcard-vpcd driver) and stays there, a card in
// "Virtual PCD 00 00", until it is killed. Clients such as piv-go,
// yubico-piv-tool and OpenSC use it through pcscd like a real key.
//
//	vyubikey --state /var/tmp/yk.json [--serial 12345678] [--vpcd localhost:35963] [--version 5.7.1]
//
// The state file holds the card's keys, certificates, PIN, PUK and management
// key; it is created on first use. If vpcd drops the connection (pcscd
// restarted) the card reconnects after a short backoff. SIGINT or SIGTERM
// unplugs it and exits.
package main

import (
	"context"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/vyubikey"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "vyubikey:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("vyubikey", flag.ContinueOnError)
	statePath := fs.String("state", "", "state file (created if missing; required)")
	serial := fs.Uint("serial", uint(vyubikey.DefaultSerial), "serial number of a new card")
	addr := fs.String("vpcd", vyubikey.DefaultVPCDAddr, "vpcd address (35963: reader \"Virtual PCD 00 00\", 35964: \"Virtual PCD 00 01\")")
	version := fs.String("version", "5.7.1", "firmware version of a new card")
	mgmtAlg := fs.String("mgmt-key-alg", "", "algorithm of the default management key of a new card: aes192 or 3des (default: the firmware's, aes192 from 5.7)")
	rootOut := fs.String("root-out", "", "write the attestation root CA certificate (PEM) to this file")
	debug := fs.Bool("debug", false, "log every command APDU (instruction and status word only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *statePath == "" {
		fs.Usage()
		return errors.New("--state is required")
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	cfg := vyubikey.Config{StatePath: *statePath, Logger: log}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// Serial and version only matter for a new card; given explicitly, they
	// must match an existing one.
	if set["serial"] || !exists(*statePath) {
		if *serial == 0 || *serial > 0xFFFFFFFF {
			return fmt.Errorf("--serial %d out of range", *serial)
		}
		cfg.Serial = uint32(*serial)
	}
	if set["version"] || !exists(*statePath) {
		v, err := parseVersion(*version)
		if err != nil {
			return err
		}
		cfg.Version = v
	}
	switch strings.ToLower(*mgmtAlg) {
	case "":
	case "aes192":
		cfg.ManagementKeyAlgorithm = 0x0A
	case "3des", "tdes":
		cfg.ManagementKeyAlgorithm = 0x03
	default:
		return fmt.Errorf("--mgmt-key-alg %q: want aes192 or 3des", *mgmtAlg)
	}

	card, err := vyubikey.New(cfg)
	if err != nil {
		return err
	}
	if *rootOut != "" {
		b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: card.AttestationRoot().Raw})
		if err := os.WriteFile(*rootOut, b, 0o644); err != nil {
			return err
		}
	}
	v := card.Version()
	log.Info("vyubikey: virtual YubiKey", "serial", card.Serial(), "version", fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]),
		"state", *statePath, "vpcd", *addr)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	serve(ctx, card, *addr, log)
	return nil
}

// serve keeps the card connected until ctx ends, reconnecting with a backoff
// (0.2 s doubling to 5 s, reset after a connection that lasted) when vpcd is
// not there or drops the connection.
func serve(ctx context.Context, card *vyubikey.Card, addr string, log *slog.Logger) {
	const minBackoff, maxBackoff = 200 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	for ctx.Err() == nil {
		start := time.Now()
		err := card.Connect(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			// Unplugged without a signal: nothing in this command does that,
			// but treat it like a drop.
			err = errors.New("unplugged")
		}
		if time.Since(start) > 10*time.Second {
			backoff = minBackoff
		}
		log.Warn("vyubikey: not connected to vpcd; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func parseVersion(s string) ([3]byte, error) {
	var v [3]byte
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return v, fmt.Errorf("--version %q: want major.minor.patch", s)
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 8)
		if err != nil {
			return v, fmt.Errorf("--version %q: %v", s, err)
		}
		v[i] = byte(n)
	}
	return v, nil
}
