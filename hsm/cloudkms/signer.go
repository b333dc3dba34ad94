package cloudkms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"io"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// algInfo is what the appliance needs to know of a Cloud KMS signing algorithm: the
// key type, the one digest it signs, and the RSA padding.
type algInfo struct {
	kt   hsm.KeyType
	hash crypto.Hash
	pss  bool
}

// algorithms are the signing algorithms the appliance can use. Cloud KMS fixes the
// digest and the padding per key version, so a signer refuses any other.
var algorithms = map[kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm]algInfo{
	kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256:        {hsm.P256, crypto.SHA256, false},
	kmspb.CryptoKeyVersion_EC_SIGN_P384_SHA384:        {hsm.P384, crypto.SHA384, false},
	kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256: {hsm.RSA2048, crypto.SHA256, false},
	kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_3072_SHA256: {hsm.RSA3072, crypto.SHA256, false},
	kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_4096_SHA256: {hsm.RSA4096, crypto.SHA256, false},
	kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_4096_SHA512: {hsm.RSA4096, crypto.SHA512, false},
	kmspb.CryptoKeyVersion_RSA_SIGN_PSS_2048_SHA256:   {hsm.RSA2048, crypto.SHA256, true},
	kmspb.CryptoKeyVersion_RSA_SIGN_PSS_3072_SHA256:   {hsm.RSA3072, crypto.SHA256, true},
	kmspb.CryptoKeyVersion_RSA_SIGN_PSS_4096_SHA256:   {hsm.RSA4096, crypto.SHA256, true},
	kmspb.CryptoKeyVersion_RSA_SIGN_PSS_4096_SHA512:   {hsm.RSA4096, crypto.SHA512, true},
}

// algorithmFor is the algorithm Generate creates for a key type: the digest the CA
// engine signs that key type with (SHA-256, SHA-384 for P-384), PKCS#1 v1.5 padding
// unless PSS is asked for.
func algorithmFor(kt hsm.KeyType, pss bool) (kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm, error) {
	if pss && !kt.IsRSA() {
		return 0, fmt.Errorf("%w: a key named *%s is RSA-PSS; key type %s is not RSA", hsm.ErrInvalidSlot, PSSSuffix, kt)
	}
	switch kt {
	case hsm.P256:
		return kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256, nil
	case hsm.P384:
		return kmspb.CryptoKeyVersion_EC_SIGN_P384_SHA384, nil
	case hsm.RSA2048:
		if pss {
			return kmspb.CryptoKeyVersion_RSA_SIGN_PSS_2048_SHA256, nil
		}
		return kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256, nil
	case hsm.RSA3072:
		if pss {
			return kmspb.CryptoKeyVersion_RSA_SIGN_PSS_3072_SHA256, nil
		}
		return kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_3072_SHA256, nil
	case hsm.RSA4096:
		if pss {
			return kmspb.CryptoKeyVersion_RSA_SIGN_PSS_4096_SHA256, nil
		}
		return kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_4096_SHA256, nil
	}
	return 0, fmt.Errorf("%w: key type %q", hsm.ErrUnsupported, kt)
}

// Signer implements hsm.Token.
func (t *Token) Signer(ctx context.Context, slot string) (crypto.Signer, error) {
	key, version, err := ParseSlot(slot)
	if err != nil {
		return nil, err
	}
	vk, err := t.publicKey(ctx, t.versionName(key, version))
	if err != nil {
		return nil, err
	}
	return &Signer{t: t, vk: vk}, nil
}

// Signer signs with one key version through AsymmetricSign.
type Signer struct {
	t  *Token
	vk *versionKey
}

// Public implements crypto.Signer.
func (s *Signer) Public() crypto.PublicKey { return s.vk.pub }

// SignatureAlgorithm is the X.509 algorithm of this key version's signatures, for
// callers choosing one (an RSA-PSS key cannot make PKCS#1 v1.5 signatures).
func (s *Signer) SignatureAlgorithm() x509.SignatureAlgorithm {
	switch {
	case s.vk.info.kt == hsm.P256:
		return x509.ECDSAWithSHA256
	case s.vk.info.kt == hsm.P384:
		return x509.ECDSAWithSHA384
	case s.vk.info.pss && s.vk.info.hash == crypto.SHA512:
		return x509.SHA512WithRSAPSS
	case s.vk.info.pss:
		return x509.SHA256WithRSAPSS
	case s.vk.info.hash == crypto.SHA512:
		return x509.SHA512WithRSA
	}
	return x509.SHA256WithRSA
}

// Sign implements crypto.Signer: the digest goes to AsymmetricSign with its CRC32C,
// and the reply is used only when Cloud KMS says it verified that checksum, names
// this key version, carries a signature matching its own CRC32C, and the signature
// verifies against the version's public key. A reply failing any of these is
// retried, within the bounded attempts, and never returned. ECDSA signatures come
// back ASN.1 DER-encoded from Cloud KMS, as crypto.Signer promises.
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	info, name := s.vk.info, s.vk.name
	h := opts.HashFunc()
	if h != info.hash {
		return nil, fmt.Errorf("%w: %s signs %v digests only (%v), asked for %v", hsm.ErrUnsupported, name, info.hash, s.vk.alg, h)
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("cloudkms: digest is %d bytes, %v needs %d", len(digest), h, h.Size())
	}
	pss, isPSS := opts.(*rsa.PSSOptions)
	switch {
	case isPSS && !info.pss:
		return nil, fmt.Errorf("%w: %s makes PKCS#1 v1.5 signatures (%v), asked for PSS", hsm.ErrUnsupported, name, s.vk.alg)
	case !isPSS && info.pss:
		return nil, fmt.Errorf("%w: %s makes RSA-PSS signatures only (%v), asked for PKCS#1 v1.5", hsm.ErrUnsupported, name, s.vk.alg)
	case isPSS && pss.SaltLength != rsa.PSSSaltLengthAuto && pss.SaltLength != rsa.PSSSaltLengthEqualsHash && pss.SaltLength != h.Size():
		return nil, fmt.Errorf("%w: Cloud KMS PSS salts are as long as the hash (%d bytes), asked %d", hsm.ErrUnsupported, h.Size(), pss.SaltLength)
	}
	d := &kmspb.Digest{}
	switch h {
	case crypto.SHA256:
		d.Digest = &kmspb.Digest_Sha256{Sha256: digest}
	case crypto.SHA384:
		d.Digest = &kmspb.Digest_Sha384{Sha384: digest}
	case crypto.SHA512:
		d.Digest = &kmspb.Digest_Sha512{Sha512: digest}
	}
	req := &kmspb.AsymmetricSignRequest{Name: name, Digest: d, DigestCrc32C: wrapperspb.Int64(crc32c(digest))}

	ctx, cancel := context.WithTimeout(context.Background(), s.t.p.opts.SignTimeout)
	defer cancel()
	var sig []byte
	err := s.t.call(ctx, "sign", func(ctx context.Context) error {
		r, err := s.t.p.client.AsymmetricSign(ctx, req)
		switch {
		case err != nil:
			return err
		case !r.GetVerifiedDigestCrc32C():
			return integrity("Cloud KMS did not verify the digest's checksum for %s", name)
		case r.GetName() != name:
			return integrity("signature for %s came back from %q", name, r.GetName())
		case r.GetSignatureCrc32C() == nil || r.GetSignatureCrc32C().GetValue() != crc32c(r.GetSignature()):
			return integrity("signature from %s does not match its signature_crc32c", name)
		}
		if err := verify(s.vk.pub, h, digest, r.GetSignature(), info.pss); err != nil {
			return integrity("signature from %s does not verify: %v", name, err)
		}
		sig = r.GetSignature()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// verify checks a signature the way a relying party will; it costs far less than the
// round trip that made it.
func verify(pub crypto.PublicKey, h crypto.Hash, digest, sig []byte, pss bool) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return fmt.Errorf("ECDSA verification failed")
		}
		return nil
	case *rsa.PublicKey:
		if pss {
			return rsa.VerifyPSS(k, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h})
		}
		return rsa.VerifyPKCS1v15(k, h, digest, sig)
	}
	return fmt.Errorf("key type %T", pub)
}
