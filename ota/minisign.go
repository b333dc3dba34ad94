package ota

import (
	"fmt"
	"io"
	"os"
	"strings"

	"aead.dev/minisign"
)

// Keys are the minisign public keys an update may be signed with.
type Keys []minisign.PublicKey

// ParseKeys reads minisign public keys: each entry is the base64 key line of a .pub
// file (RWQ...), or a whole .pub file's text, or the path of a .pub file.
func ParseKeys(entries []string) (Keys, error) {
	var out Keys
	for _, e := range entries {
		text := strings.TrimSpace(e)
		if strings.HasPrefix(text, "/") {
			b, err := os.ReadFile(text)
			if err != nil {
				return nil, fmt.Errorf("minisign public key: %w", err)
			}
			text = strings.TrimSpace(string(b))
		}
		var k minisign.PublicKey
		if err := k.UnmarshalText([]byte(text)); err != nil {
			return nil, fmt.Errorf("minisign public key %q: %w", short(e), err)
		}
		out = append(out, k)
	}
	return out, nil
}

func short(s string) string {
	if len(s) > 24 {
		return s[:24] + "..."
	}
	return s
}

// VerifyFile checks the detached minisign signature (the text of a .minisig file) of
// the file at path against the keys: one of them must have made it. Both the legacy
// (Ed) and the prehashed (ED, minisign's default) forms are accepted. It returns the
// trusted comment, which the signature covers too.
func (k Keys) VerifyFile(path string, signature []byte) (trustedComment string, err error) {
	if len(k) == 0 {
		return "", fmt.Errorf("%w: no minisign public key configured (ota.public_keys)", ErrRefused)
	}
	var sig minisign.Signature
	if err := sig.UnmarshalText(signature); err != nil {
		return "", fmt.Errorf("%w: signature: %v", ErrRefused, err)
	}
	for _, key := range k {
		if key.ID() != sig.KeyID {
			continue
		}
		var ok bool
		if sig.Algorithm == minisign.EdDSA {
			// Legacy signatures cover the whole message, not its hash.
			msg, err := os.ReadFile(path)
			if err != nil {
				return "", err
			}
			ok = minisign.Verify(key, msg, signature)
		} else {
			f, err := os.Open(path)
			if err != nil {
				return "", err
			}
			r := minisign.NewReader(f)
			_, err = io.Copy(io.Discard, r)
			f.Close()
			if err != nil {
				return "", err
			}
			ok = r.Verify(key, signature)
		}
		if ok {
			return sig.TrustedComment, nil
		}
		return "", fmt.Errorf("%w: the signature does not verify with key %X", ErrRefused, key.ID())
	}
	return "", fmt.Errorf("%w: signed by key %X, which is not among ota.public_keys", ErrRefused, sig.KeyID)
}
