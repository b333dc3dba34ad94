package hsm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"testing"
)

func TestPINErrorMatchesByRetries(t *testing.T) {
	wrapped := fmt.Errorf("login: %w", &PINError{Token: "yubikey-1", Retries: 2})
	if !errors.Is(wrapped, ErrPINIncorrect) || errors.Is(wrapped, ErrPINBlocked) || PINRetries(wrapped) != 2 {
		t.Fatalf("2 tries left: %v", wrapped)
	}
	blocked := &PINError{Token: "yubikey-1", Retries: 0}
	if !errors.Is(blocked, ErrPINBlocked) || errors.Is(blocked, ErrPINIncorrect) {
		t.Fatalf("0 tries left must read as blocked: %v", blocked)
	}
	if PINRetries(errors.New("other")) != -1 {
		t.Fatal("retries of an unrelated error")
	}
}

func TestKeyTypes(t *testing.T) {
	for _, kt := range KeyTypes {
		got, err := ParseKeyType(string(kt))
		if err != nil || got != kt {
			t.Fatalf("%s: %v", kt, err)
		}
	}
	for _, bad := range []string{"", "RSA2048", "p521", "ed25519"} {
		if _, err := ParseKeyType(bad); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if kt, err := KeyTypeOf(ec.Public()); kt != P384 || err != nil {
		t.Fatalf("P-384 key: %s %v", kt, err)
	}
	small, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if _, err := KeyTypeOf(small.Public()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("P-224: %v", err)
	}
	r, _ := rsa.GenerateKey(rand.Reader, 1024)
	if _, err := KeyTypeOf(r.Public()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("RSA-1024: %v", err)
	}
}
