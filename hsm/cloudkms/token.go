package cloudkms

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/iterator"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// What a key ring offers beyond the core; a lost method would silently turn into
// ErrUnsupported, so the compiler checks.
var (
	_ hsm.KeyDeleter = (*Token)(nil)
	_ hsm.Attester   = (*Token)(nil)
)

// Token is one key ring. Cloud KMS serves concurrent calls, so the token needs no
// session lock; the mutex guards only what the token knows of the key ring.
type Token struct {
	p        *Provider
	name     string // projects/<p>/locations/<l>/keyRings/<r>
	id       string // cloudkms-<id>
	location string

	mu         sync.Mutex
	present    bool      // the API answered the last call or check
	authorized bool      // the last check was not refused for the credentials
	checked    time.Time // when present/authorized were last learnt
	pubs       map[string]*versionKey
}

// versionKey is what a key version's verified public key tells: it never changes for
// a version, so it is fetched (and checked) once.
type versionKey struct {
	name  string // full resource name of the version
	pub   crypto.PublicKey
	alg   kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
	info  algInfo
	level kmspb.ProtectionLevel
}

// Info implements hsm.Token. A key ring has no PIN: PIN.Set says whether Cloud KMS
// accepted the credentials at the last check, so a key ring the service account lost
// its roles on shows its slots disconnected.
func (t *Token) Info() hsm.Info {
	t.mu.Lock()
	defer t.mu.Unlock()
	return hsm.Info{ID: t.id, Kind: hsm.KindCloudKMS, Model: "Google Cloud KMS key ring (" + t.location + ")",
		Serial: t.name, Present: t.present, PIN: hsm.PINStatus{Set: t.authorized, Retries: -1}}
}

// Name is the key ring's resource name.
func (t *Token) Name() string { return t.name }

// check asks Cloud KMS for the key ring when a check is due: always while the key
// ring is absent, else every ProbeInterval without another successful call.
func (t *Token) check(ctx context.Context) {
	t.mu.Lock()
	due := !t.present || time.Since(t.checked) >= t.p.opts.ProbeInterval
	t.mu.Unlock()
	if !due {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, t.p.opts.ProbeTimeout)
	defer cancel()
	_, err := t.p.client.GetKeyRing(pctx, &kmspb.GetKeyRingRequest{Name: t.name})
	switch code := codeOf(err); {
	case err == nil:
		t.answered(true)
	case code == codes.PermissionDenied || code == codes.Unauthenticated:
		t.answered(false)
		t.setAuthorized(false)
		logger().Warn("Cloud KMS refuses the credentials for the key ring", "hsm", t.id, "err", err)
	case code == codes.ResourceExhausted:
		// Over quota, but there: leave the state as it is.
	case ctx.Err() != nil:
		// The scan was cancelled (shutdown): that says nothing about the key ring.
	default:
		t.markAbsent(err.Error())
	}
}

// answered records that the API answered: the key ring is present. A call that
// succeeded also shows that the credentials are accepted; a refusal shows nothing
// about them for the key ring as a whole (one key's IAM policy may differ).
func (t *Token) answered(succeeded bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.present {
		logger().Info("Cloud KMS key ring reachable", "hsm", t.id, "key_ring", t.name)
	}
	t.present, t.checked = true, time.Now()
	if succeeded {
		t.authorized = true
	}
}

func (t *Token) setAuthorized(ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.authorized = ok
}

func (t *Token) markAbsent(why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.present {
		logger().Warn("Cloud KMS key ring unreachable", "hsm", t.id, "reason", why)
	}
	t.present, t.checked = false, time.Now()
}

// Slot names.

var keyIDRe = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,63}$`)

// PSSSuffix on a key name asks Generate for an RSA-PSS key: RSA_SIGN_PSS_<bits>_SHA256
// instead of RSA_SIGN_PKCS1_<bits>_SHA256. The padding is fixed per Cloud KMS key, so
// it is named where everybody sees it: in the key name, in the Cloud console, and in
// the slot id.
const PSSSuffix = "-pss"

// ParseSlot splits a slot name into the CryptoKey id and the version number: "<key>"
// stands for "<key>/1", the version Generate makes. Versions are written in canonical
// decimal, so one version has one slot name.
func ParseSlot(slot string) (key, version string, err error) {
	key, version, hasVersion := strings.Cut(slot, "/")
	if !hasVersion {
		version = "1"
	}
	if !keyIDRe.MatchString(key) {
		return "", "", fmt.Errorf("%w: %q: a Cloud KMS slot is <key>/<version>, the key 1 to 63 of A-Z a-z 0-9 _ -", hsm.ErrInvalidSlot, slot)
	}
	if n, err := strconv.ParseUint(version, 10, 63); err != nil || n == 0 || strconv.FormatUint(n, 10) != version {
		return "", "", fmt.Errorf("%w: %q: the version is a number from 1, without leading zeros", hsm.ErrInvalidSlot, slot)
	}
	return key, version, nil
}

func (t *Token) keyName(key string) string { return t.name + "/cryptoKeys/" + key }

func (t *Token) versionName(key, version string) string {
	return t.keyName(key) + "/cryptoKeyVersions/" + version
}

// Slots implements hsm.Token: every enabled version of every asymmetric-signing key.
func (t *Token) Slots(ctx context.Context) ([]hsm.SlotInfo, error) {
	var keys []*kmspb.CryptoKey
	err := t.call(ctx, "list keys", func(ctx context.Context) error {
		keys = keys[:0]
		it := t.p.client.ListCryptoKeys(ctx, &kmspb.ListCryptoKeysRequest{Parent: t.name})
		for {
			k, err := it.Next()
			if errors.Is(err, iterator.Done) {
				return nil
			}
			if err != nil {
				return err
			}
			if k.GetPurpose() == kmspb.CryptoKey_ASYMMETRIC_SIGN {
				keys = append(keys, k)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	var out []hsm.SlotInfo
	for _, k := range keys {
		var versions []*kmspb.CryptoKeyVersion
		err := t.call(ctx, "list key versions", func(ctx context.Context) error {
			versions = versions[:0]
			it := t.p.client.ListCryptoKeyVersions(ctx, &kmspb.ListCryptoKeyVersionsRequest{Parent: k.GetName()})
			for {
				v, err := it.Next()
				if errors.Is(err, iterator.Done) {
					return nil
				}
				if err != nil {
					return err
				}
				if v.GetState() == kmspb.CryptoKeyVersion_ENABLED {
					versions = append(versions, v)
				}
			}
		})
		if err != nil {
			return nil, err
		}
		for _, v := range versions {
			// Algorithms the appliance cannot sign with (Ed25519, secp256k1,
			// post-quantum, raw RSA) are listed with no key type.
			out = append(out, hsm.SlotInfo{Slot: keyIDOf(k.GetName()) + "/" + keyIDOf(v.GetName()),
				KeyType: algorithms[v.GetAlgorithm()].kt, Label: k.GetLabels()[labelKey], Occupied: true})
		}
	}
	return out, nil
}

// Labels the appliance sets on the keys it creates.
const (
	labelKey     = "iot-hsm-label"  // the provisioning label, in label syntax
	createdByKey = "iot-hsm-create" // a random id per creation, to recognise our own key after a retry
)

// labelValue fits a free-text label into Cloud KMS label syntax: lowercase letters,
// digits, '_' and '-', at most 63 characters.
func labelValue(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if b.Len() >= 63 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	return b.String()
}

// Generate implements hsm.Token: it creates the CryptoKey slot names (version 1 is
// made with it), protection level HSM, and waits until the version is enabled. A key
// that exists is never touched: Cloud KMS keys cannot be replaced, only their
// versions destroyed, so overwrite is refused rather than silently taken over.
func (t *Token) Generate(ctx context.Context, slot string, kt hsm.KeyType, opts hsm.KeyOptions) (crypto.PublicKey, error) {
	key, version, err := ParseSlot(slot)
	if err != nil {
		return nil, err
	}
	if strings.Contains(slot, "/") && version != "1" {
		return nil, fmt.Errorf("%w: %q: generate creates a new key: give its name (version 1 is made with it)", hsm.ErrInvalidSlot, slot)
	}
	pss := strings.HasSuffix(key, PSSSuffix)
	alg, err := algorithmFor(kt, pss)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, 8)
	rand.Read(nonce)
	labels := map[string]string{createdByKey: hex.EncodeToString(nonce)}
	if l := labelValue(opts.Label); l != "" {
		labels[labelKey] = l
	}
	req := &kmspb.CreateCryptoKeyRequest{Parent: t.name, CryptoKeyId: key, CryptoKey: &kmspb.CryptoKey{
		Purpose: kmspb.CryptoKey_ASYMMETRIC_SIGN,
		VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
			ProtectionLevel: kmspb.ProtectionLevel_HSM, Algorithm: alg,
		},
		Labels: labels,
	}}
	attempt := 0
	err = t.call(ctx, "create key", func(ctx context.Context) error {
		attempt++
		_, err := t.p.client.CreateCryptoKey(ctx, req)
		if status.Code(err) == codes.AlreadyExists && attempt > 1 {
			// An earlier attempt may have created the key and lost the reply:
			// the key is ours when it carries this request's random label.
			k, gerr := t.p.client.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: t.keyName(key)})
			if gerr == nil && k.GetLabels()[createdByKey] == labels[createdByKey] {
				return nil
			}
		}
		return err
	})
	switch {
	case errors.Is(err, hsm.ErrExists) && opts.Overwrite:
		return nil, fmt.Errorf("%w: %s/%s exists and Cloud KMS keys cannot be replaced; generate under a new key name", hsm.ErrUnsupported, t.id, key)
	case errors.Is(err, hsm.ErrExists):
		return nil, fmt.Errorf("%w: key %s exists in %s (take it over with mode existing and %s/<version>)", hsm.ErrExists, key, t.id, key)
	case err != nil:
		return nil, err
	}
	name := t.versionName(key, "1")
	logger().Info("Cloud KMS key created", "hsm", t.id, "key", key, "algorithm", alg.String())
	if err := t.waitEnabled(ctx, name); err != nil {
		return nil, err
	}
	vk, err := t.publicKey(ctx, name)
	if err != nil {
		return nil, err
	}
	if vk.alg != alg || vk.level != kmspb.ProtectionLevel_HSM {
		return nil, fmt.Errorf("cloudkms %s: %s was created as %v/%v, asked %v/HSM", t.id, name, vk.alg, vk.level, alg)
	}
	return vk.pub, nil
}

// waitEnabled polls a new version until Cloud KMS has generated its key.
func (t *Token) waitEnabled(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, t.p.opts.GenerateTimeout)
	defer cancel()
	pause := 100 * time.Millisecond
	for {
		var v *kmspb.CryptoKeyVersion
		err := t.call(ctx, "get key version", func(ctx context.Context) (err error) {
			v, err = t.p.client.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: name})
			return err
		})
		if err != nil {
			return err
		}
		switch v.GetState() {
		case kmspb.CryptoKeyVersion_ENABLED:
			return nil
		case kmspb.CryptoKeyVersion_PENDING_GENERATION:
		case kmspb.CryptoKeyVersion_GENERATION_FAILED:
			return fmt.Errorf("cloudkms %s: Cloud KMS failed to generate %s: %s", t.id, name, v.GetGenerationFailureReason())
		default:
			return fmt.Errorf("%w: %s: %s is %v", hsm.ErrNotFound, t.id, name, v.GetState())
		}
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return fmt.Errorf("%w: %s: %s still pending generation: %v", hsm.ErrOffline, t.id, name, ctx.Err())
		}
		pause = min(pause*3/2, 2*time.Second)
	}
}

// PublicKey implements hsm.Token.
func (t *Token) PublicKey(ctx context.Context, slot string) (crypto.PublicKey, error) {
	key, version, err := ParseSlot(slot)
	if err != nil {
		return nil, err
	}
	vk, err := t.publicKey(ctx, t.versionName(key, version))
	if err != nil {
		return nil, err
	}
	return vk.pub, nil
}

// publicKey fetches a version's public key once, checking that the reply names the
// version asked for and that the PEM matches its pem_crc32c.
func (t *Token) publicKey(ctx context.Context, name string) (*versionKey, error) {
	t.mu.Lock()
	vk, ok := t.pubs[name]
	t.mu.Unlock()
	if ok {
		return vk, nil
	}
	var pk *kmspb.PublicKey
	err := t.call(ctx, "get public key", func(ctx context.Context) error {
		r, err := t.p.client.GetPublicKey(ctx, &kmspb.GetPublicKeyRequest{Name: name})
		switch {
		case err != nil:
			return err
		case r.GetName() != name:
			return integrity("public key of %s came back for %q", name, r.GetName())
		case r.GetPemCrc32C() == nil || r.GetPemCrc32C().GetValue() != crc32c([]byte(r.GetPem())):
			return integrity("public key of %s does not match its pem_crc32c", name)
		}
		pk = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	info, ok := algorithms[pk.GetAlgorithm()]
	if !ok {
		return nil, fmt.Errorf("%w: %s: %s is %v; the appliance signs with EC P-256/P-384 and RSA PKCS#1 or PSS keys", hsm.ErrUnsupported, t.id, name, pk.GetAlgorithm())
	}
	block, _ := pem.Decode([]byte(pk.GetPem()))
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("cloudkms %s: public key of %s is not a PUBLIC KEY PEM", t.id, name)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("cloudkms %s: public key of %s: %w", t.id, name, err)
	}
	if kt, err := hsm.KeyTypeOf(pub); err != nil || kt != info.kt {
		return nil, fmt.Errorf("cloudkms %s: public key of %s is not a %s key, as %v says", t.id, name, info.kt, pk.GetAlgorithm())
	}
	vk = &versionKey{name: name, pub: pub, alg: pk.GetAlgorithm(), info: info, level: pk.GetProtectionLevel()}
	t.mu.Lock()
	t.pubs[name] = vk
	t.mu.Unlock()
	return vk, nil
}

// DeleteKey implements hsm.KeyDeleter: the version is scheduled for destruction, Cloud
// KMS's only way to destroy key material. Until the scheduled time passes (the key's
// destroy_scheduled_duration, 30 days unless set otherwise) RestoreCryptoKeyVersion
// brings it back, outside the appliance.
func (t *Token) DeleteKey(ctx context.Context, slot string) error {
	key, version, err := ParseSlot(slot)
	if err != nil {
		return err
	}
	name := t.versionName(key, version)
	var v *kmspb.CryptoKeyVersion
	err = t.call(ctx, "destroy key version", func(ctx context.Context) (err error) {
		v, err = t.p.client.DestroyCryptoKeyVersion(ctx, &kmspb.DestroyCryptoKeyVersionRequest{Name: name})
		return err
	})
	if err != nil {
		return err
	}
	t.mu.Lock()
	delete(t.pubs, name)
	t.mu.Unlock()
	logger().Warn("Cloud KMS key version scheduled for destruction", "hsm", t.id, "version", name,
		"destroy_time", v.GetDestroyTime().AsTime().UTC().Format(time.RFC3339))
	return nil
}

// Close implements hsm.Token; the provider owns the connection.
func (t *Token) Close() error { return nil }
