package pkcs11

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// Curve OIDs as DER, the form CKA_EC_PARAMS takes.
var (
	oidP256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384 = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
)

// ParseSlot turns a protocol slot name (1..32 hex digits) into the CKA_ID bytes and the
// canonical name (lowercase, even length: "1" and "01" are the same slot).
func ParseSlot(slot string) ([]byte, string, error) {
	if len(slot) < 1 || len(slot) > 32 {
		return nil, "", fmt.Errorf("%w: %q: a PKCS#11 slot is 1 to 32 hex digits", hsm.ErrInvalidSlot, slot)
	}
	s := strings.ToLower(slot)
	if len(s)%2 == 1 {
		s = "0" + s
	}
	id, err := hex.DecodeString(s)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %q: a PKCS#11 slot is 1 to 32 hex digits", hsm.ErrInvalidSlot, slot)
	}
	return id, s, nil
}

func curveParams(kt hsm.KeyType) ([]byte, error) {
	switch kt {
	case hsm.P256:
		return asn1.Marshal(oidP256)
	case hsm.P384:
		return asn1.Marshal(oidP384)
	}
	return nil, fmt.Errorf("%w: %s is not an EC key type", hsm.ErrUnsupported, kt)
}

// keyTemplates are the attributes every CA key pair gets: on the token, private,
// sensitive and never extractable, so the key cannot be read out even by the
// appliance itself, and usable for signing only.
func keyTemplates(id []byte, label string) (pub, priv []*pkcs11.Attribute) {
	pub = []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	priv = []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		// A CA key signs and does nothing else.
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	return pub, priv
}

// Generate implements hsm.Token: the key pair is made inside the token.
func (t *Token) Generate(ctx context.Context, slot string, kt hsm.KeyType, opts hsm.KeyOptions) (crypto.PublicKey, error) {
	id, name, err := ParseSlot(slot)
	if err != nil {
		return nil, err
	}
	pubT, privT := keyTemplates(id, labelOr(opts.Label, name))
	var mech *pkcs11.Mechanism
	switch {
	case kt.IsRSA():
		mech = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)
		pubT = append(pubT,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, kt.Bits()),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}))
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA))
	case kt.Curve() != nil:
		params, _ := curveParams(kt)
		mech = pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)
		pubT = append(pubT,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params))
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC))
	default:
		return nil, fmt.Errorf("%w: key type %q", hsm.ErrUnsupported, kt)
	}
	var pub crypto.PublicKey
	err = t.do(ctx, func(s pkcs11.SessionHandle) error {
		if err := t.clearSlot(s, id, name, opts.Overwrite); err != nil {
			return err
		}
		pubH, _, err := t.m.ctx.GenerateKeyPair(s, []*pkcs11.Mechanism{mech}, pubT, privT)
		if err != nil {
			return err
		}
		pub, err = t.readPublic(s, pubH)
		return err
	})
	if err != nil {
		return nil, err
	}
	return pub, nil
}

// Import implements hsm.Importer: the key becomes a sensitive, non-extractable token object.
// The attribute buffers holding private values are zeroed once the token has them.
func (t *Token) Import(ctx context.Context, slot string, key crypto.Signer, opts hsm.KeyOptions) (crypto.PublicKey, error) {
	id, name, err := ParseSlot(slot)
	if err != nil {
		return nil, err
	}
	if _, err := hsm.KeyTypeOf(key.Public()); err != nil {
		return nil, err
	}
	pubT, privT := keyTemplates(id, labelOr(opts.Label, name))
	pubT, privT, secrets, err := importAttributes(key, pubT, privT)
	if err != nil {
		return nil, err
	}
	defer zeroSecrets(secrets, privT)
	err = t.do(ctx, func(s pkcs11.SessionHandle) error {
		if err := t.clearSlot(s, id, name, opts.Overwrite); err != nil {
			return err
		}
		privH, err := t.m.ctx.CreateObject(s, privT)
		if err != nil {
			return err
		}
		if _, err := t.m.ctx.CreateObject(s, pubT); err != nil {
			_ = t.m.ctx.DestroyObject(s, privH)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return key.Public(), nil
}

// importAttributes appends the key's type and values to the public and
// private object templates. secrets are the private values, for the caller
// to zero with zeroSecrets.
func importAttributes(key crypto.Signer, pubT, privT []*pkcs11.Attribute) (pub, priv []*pkcs11.Attribute, secrets [][]byte, err error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return rsaImportAttributes(k, pubT, privT)
	case *ecdsa.PrivateKey:
		return ecdsaImportAttributes(k, pubT, privT)
	default:
		return nil, nil, nil, fmt.Errorf("%w: private key type %T", hsm.ErrUnsupported, key)
	}
}

// rsaImportAttributes passes the CRT values along with D. A multi-prime
// key is refused: a PKCS#11 RSA key object has room for two primes only.
func rsaImportAttributes(k *rsa.PrivateKey, pubT, privT []*pkcs11.Attribute) (pub, priv []*pkcs11.Attribute, secrets [][]byte, err error) {
	k.Precompute()
	if len(k.Primes) != 2 {
		return nil, nil, nil, fmt.Errorf("%w: multi-prime RSA keys", hsm.ErrUnsupported)
	}
	e := big.NewInt(int64(k.E)).Bytes()
	secrets = [][]byte{k.D.Bytes(), k.Primes[0].Bytes(), k.Primes[1].Bytes(),
		k.Precomputed.Dp.Bytes(), k.Precomputed.Dq.Bytes(), k.Precomputed.Qinv.Bytes()}
	pubT = append(pubT,
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, k.N.Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, e))
	privT = append(privT,
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, k.N.Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, e),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE_EXPONENT, secrets[0]),
		pkcs11.NewAttribute(pkcs11.CKA_PRIME_1, secrets[1]),
		pkcs11.NewAttribute(pkcs11.CKA_PRIME_2, secrets[2]),
		pkcs11.NewAttribute(pkcs11.CKA_EXPONENT_1, secrets[3]),
		pkcs11.NewAttribute(pkcs11.CKA_EXPONENT_2, secrets[4]),
		pkcs11.NewAttribute(pkcs11.CKA_COEFFICIENT, secrets[5]))
	return pubT, privT, secrets, nil
}

// ecdsaImportAttributes wraps the public point in a DER OCTET STRING: that
// is the encoding PKCS#11 specifies for CKA_EC_POINT.
func ecdsaImportAttributes(k *ecdsa.PrivateKey, pubT, privT []*pkcs11.Attribute) (pub, priv []*pkcs11.Attribute, secrets [][]byte, err error) {
	kt, _ := hsm.KeyTypeOf(k.Public())
	params, _ := curveParams(kt)
	raw, err := k.PublicKey.Bytes()
	if err != nil {
		return nil, nil, nil, err
	}
	point, err := asn1.Marshal(raw)
	if err != nil {
		return nil, nil, nil, err
	}
	d, err := k.Bytes()
	if err != nil {
		return nil, nil, nil, err
	}
	pubT = append(pubT,
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point))
	privT = append(privT,
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, d))
	return pubT, privT, [][]byte{d}, nil
}

// zeroSecrets clears the private values and the template's copies of them:
// NewAttribute copied the values into C-friendly buffers.
func zeroSecrets(secrets [][]byte, privT []*pkcs11.Attribute) {
	for _, s := range secrets {
		clear(s)
	}
	for _, a := range privT {
		clear(a.Value)
	}
}

func labelOr(label, slot string) string {
	if label != "" {
		return label
	}
	return "iot-hsm " + slot
}

// clearSlot refuses an occupied slot unless overwrite, and then destroys what is there.
func (t *Token) clearSlot(s pkcs11.SessionHandle, id []byte, name string, overwrite bool) error {
	objs, err := t.find(s, id, nil)
	if err != nil {
		return err
	}
	if len(objs) == 0 {
		return nil
	}
	if !overwrite {
		return fmt.Errorf("%w: %s/%s holds a key (use overwrite to replace it)", hsm.ErrExists, t.id, name)
	}
	for _, o := range objs {
		if err := t.m.ctx.DestroyObject(s, o); err != nil {
			return err
		}
	}
	delete(t.keys, name)
	return nil
}

// find returns the objects with CKA_ID id, of the given class when class is not nil.
func (t *Token) find(s pkcs11.SessionHandle, id []byte, class *uint) ([]pkcs11.ObjectHandle, error) {
	var tmpl []*pkcs11.Attribute
	if id != nil {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	if class != nil {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_CLASS, *class))
	}
	if err := t.m.ctx.FindObjectsInit(s, tmpl); err != nil {
		return nil, err
	}
	var out []pkcs11.ObjectHandle
	for {
		objs, _, err := t.m.ctx.FindObjects(s, 64)
		if err != nil {
			_ = t.m.ctx.FindObjectsFinal(s)
			return nil, err
		}
		out = append(out, objs...)
		if len(objs) < 64 {
			break
		}
	}
	return out, t.m.ctx.FindObjectsFinal(s)
}

func classPtr(c uint) *uint { return &c }

// privateKey (inside do) returns the private key handle of the slot, cached for the
// session.
func (t *Token) privateKey(s pkcs11.SessionHandle, slot string) (pkcs11.ObjectHandle, error) {
	id, name, err := ParseSlot(slot)
	if err != nil {
		return 0, err
	}
	if h, ok := t.keys[name]; ok {
		return h.priv, nil
	}
	objs, err := t.find(s, id, classPtr(pkcs11.CKO_PRIVATE_KEY))
	if err != nil {
		return 0, err
	}
	if len(objs) == 0 {
		return 0, fmt.Errorf("%w: no key in %s/%s", hsm.ErrNotFound, t.id, name)
	}
	t.keys[name] = keyHandles{priv: objs[0]}
	return objs[0], nil
}

// PublicKey implements hsm.Token.
func (t *Token) PublicKey(ctx context.Context, slot string) (crypto.PublicKey, error) {
	id, name, err := ParseSlot(slot)
	if err != nil {
		return nil, err
	}
	var pub crypto.PublicKey
	err = t.do(ctx, func(s pkcs11.SessionHandle) error {
		objs, err := t.find(s, id, classPtr(pkcs11.CKO_PUBLIC_KEY))
		if err != nil {
			return err
		}
		if len(objs) == 0 {
			return fmt.Errorf("%w: no public key in %s/%s", hsm.ErrNotFound, t.id, name)
		}
		pub, err = t.readPublic(s, objs[0])
		return err
	})
	return pub, err
}

func (t *Token) readPublic(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) (crypto.PublicKey, error) {
	attrs, err := t.m.ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
	})
	if err != nil {
		return nil, err
	}
	switch bytesToUint(attrs[0].Value) {
	case pkcs11.CKK_RSA:
		a, err := t.m.ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
		})
		if err != nil {
			return nil, err
		}
		e := new(big.Int).SetBytes(a[1].Value)
		if !e.IsInt64() || e.Int64() > 1<<31-1 {
			return nil, fmt.Errorf("pkcs11 %s: RSA public exponent out of range", t.id)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(a[0].Value), E: int(e.Int64())}, nil
	case pkcs11.CKK_EC:
		a, err := t.m.ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		})
		if err != nil {
			return nil, err
		}
		return parseECPublic(a[0].Value, a[1].Value)
	}
	return nil, fmt.Errorf("%w: key object of type %x", hsm.ErrUnsupported, attrs[0].Value)
}

func parseECPublic(params, point []byte) (*ecdsa.PublicKey, error) {
	var oid asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(params, &oid); err != nil {
		return nil, fmt.Errorf("pkcs11: CKA_EC_PARAMS: %w", err)
	}
	var curve elliptic.Curve
	switch {
	case oid.Equal(oidP256):
		curve = elliptic.P256()
	case oid.Equal(oidP384):
		curve = elliptic.P384()
	default:
		return nil, fmt.Errorf("%w: EC curve %s", hsm.ErrUnsupported, oid)
	}
	// PKCS#11 says CKA_EC_POINT is a DER OCTET STRING; some modules return the raw
	// point. Accept both.
	var raw []byte
	if rest, err := asn1.Unmarshal(point, &raw); err != nil || len(rest) != 0 {
		raw = point
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, raw)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: CKA_EC_POINT is not a point on %s", curve.Params().Name)
	}
	return pub, nil
}

// bytesToUint reads a CK_ULONG attribute, which the module writes in host byte order.
func bytesToUint(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	}
	return ^uint(0)
}

// Slots implements hsm.Token: every private key object is a slot.
func (t *Token) Slots(ctx context.Context) ([]hsm.SlotInfo, error) {
	var out []hsm.SlotInfo
	err := t.do(ctx, func(s pkcs11.SessionHandle) error {
		certs, err := t.find(s, nil, classPtr(pkcs11.CKO_CERTIFICATE))
		if err != nil {
			return err
		}
		hasCert := map[string]bool{}
		for _, c := range certs {
			a, err := t.m.ctx.GetAttributeValue(s, c, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
			if err == nil {
				hasCert[hex.EncodeToString(a[0].Value)] = true
			}
		}
		pubs, err := t.find(s, nil, classPtr(pkcs11.CKO_PUBLIC_KEY))
		if err != nil {
			return err
		}
		for _, h := range pubs {
			a, err := t.m.ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
			})
			if err != nil || len(a[0].Value) == 0 {
				continue
			}
			name := hex.EncodeToString(a[0].Value)
			info := hsm.SlotInfo{Slot: name, Label: string(a[1].Value), HasCert: hasCert[name], Occupied: true}
			if pub, err := t.readPublic(s, h); err == nil {
				info.KeyType, _ = hsm.KeyTypeOf(pub)
			}
			out = append(out, info)
		}
		return nil
	})
	return out, err
}

// DeleteKey implements hsm.KeyDeleter: key pair and certificate with the slot's CKA_ID go.
func (t *Token) DeleteKey(ctx context.Context, slot string) error {
	id, name, err := ParseSlot(slot)
	if err != nil {
		return err
	}
	return t.do(ctx, func(s pkcs11.SessionHandle) error {
		return t.clearSlot(s, id, name, true)
	})
}
