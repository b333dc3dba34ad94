// Package kmstest is a local gRPC server speaking the part of the Cloud KMS API the
// appliance uses (key rings, asymmetric-signing keys and versions, public keys,
// AsymmetricSign, attestations), with software keys and real CRC32C checksums, so that
// the real client library (cloud.google.com/go/kms/apiv1) can be tested end to end
// without a Google account. Faults are injected per method: transport and quota
// errors, permission refusals, calls that hang past the client's deadline, and
// corrupted integrity fields in replies. For tests only.
package kmstest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Fault is a misbehaviour the server can be told to show.
type Fault int

const (
	// Unavailable answers UNAVAILABLE, as a KMS front end does during an outage.
	Unavailable Fault = iota + 1
	// ResourceExhausted answers RESOURCE_EXHAUSTED, as KMS does when a quota is spent.
	ResourceExhausted
	// PermissionDenied answers PERMISSION_DENIED, as for credentials lacking a role.
	PermissionDenied
	// Hang holds the call until the client gives up (its deadline passes).
	Hang
	// BadSignatureCRC returns a signature whose signature_crc32c does not match.
	BadSignatureCRC
	// UnverifiedDigest returns verified_digest_crc32c false: the digest's checksum was
	// not checked on the server, so the signature may cover a corrupted digest.
	UnverifiedDigest
	// WrongName returns a signature naming another key version.
	WrongName
	// CorruptSignature changes the signature and recomputes its checksum, as a
	// server-side bug would: only verifying the signature itself catches it.
	CorruptSignature
	// BadPublicKeyCRC returns a public key whose pem_crc32c does not match.
	BadPublicKeyCRC
	// LoseReply carries out CreateCryptoKey and then answers UNAVAILABLE, as when the
	// reply is lost on the way back: a retry then finds the key already there.
	LoseReply
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) int64 { return int64(crc32.Checksum(b, crcTable)) }

// Server is the fake KMS. Its state survives Stop and Restart, so a test can take the
// "service" away and bring it back under the same address.
type Server struct {
	kmspb.UnimplementedKeyManagementServiceServer

	// GenerationDelay is how long a new key version stays PENDING_GENERATION before
	// its key is made, as an HSM-backed version does in Cloud KMS.
	GenerationDelay time.Duration
	// PageSize caps list pages (0: 100), so clients must follow page tokens.
	PageSize int

	addr string

	mu      sync.Mutex
	grpcSrv *grpc.Server
	rings   map[string]*kmspb.KeyRing
	keys    map[string]*cryptoKey // by CryptoKey name
	faults  []*fault
	calls   map[string]int
	attest  *attestationCA
}

type cryptoKey struct {
	pb       *kmspb.CryptoKey
	versions []*keyVersion
}

type keyVersion struct {
	pb   *kmspb.CryptoKeyVersion
	priv crypto.Signer // nil while pending generation
}

type fault struct {
	method string // "" for every method
	kind   Fault
	left   int // < 0: until cleared
}

// New returns a server with no key rings; Listen starts it.
func New() (*Server, error) {
	ac, err := newAttestationCA()
	if err != nil {
		return nil, err
	}
	return &Server{rings: map[string]*kmspb.KeyRing{}, keys: map[string]*cryptoKey{},
		calls: map[string]int{}, attest: ac}, nil
}

// Start returns a server listening on a free loopback port, stopped when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Listen serves on addr (host:port; port 0 picks one). After Stop, Listen again with
// Addr() to bring the same service back.
func (s *Server) Listen(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	kmspb.RegisterKeyManagementServiceServer(gs, s)
	s.mu.Lock()
	s.addr, s.grpcSrv = lis.Addr().String(), gs
	s.mu.Unlock()
	go gs.Serve(lis)
	return nil
}

// Stop closes the listener and every connection: to clients, an outage.
func (s *Server) Stop() {
	s.mu.Lock()
	gs := s.grpcSrv
	s.grpcSrv = nil
	s.mu.Unlock()
	if gs != nil {
		gs.Stop()
	}
}

// Restart listens again on the address the server had.
func (s *Server) Restart() error {
	s.Stop()
	return s.Listen(s.Addr())
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// ClientOptions point the real client at this server: plaintext gRPC on loopback and
// no credentials, as the backend's insecure mode does.
func (s *Server) ClientOptions() []option.ClientOption {
	return []option.ClientOption{
		option.WithEndpoint(s.Addr()),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}
}

// Inject makes the next times calls of method (a KMS method name such as
// "AsymmetricSign"; "" for any) show the fault; times < 0 keeps it until ClearFaults.
// Integrity faults apply only to the methods whose replies carry the field.
func (s *Server) Inject(method string, f Fault, times int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &fault{method: method, kind: f, left: times})
}

// ClearFaults removes every injected fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Calls returns how many calls of method arrived (faulty ones included).
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// AttestationRoots are the fake manufacturer and Google roots the attestation chains
// of HSM-protected versions end in.
func (s *Server) AttestationRoots() []*x509.Certificate {
	return []*x509.Certificate{s.attest.vendorRoot, s.attest.googleRoot}
}

// takeFault (s.mu held) consumes and returns the first fault matching method among
// kinds, or 0.
func (s *Server) takeFault(method string, kinds ...Fault) Fault {
	for i, f := range s.faults {
		if f.method != "" && f.method != method {
			continue
		}
		for _, k := range kinds {
			if f.kind != k {
				continue
			}
			if f.left > 0 {
				f.left--
				if f.left == 0 {
					s.faults = append(s.faults[:i], s.faults[i+1:]...)
				}
			}
			return k
		}
	}
	return 0
}

// enter counts the call and plays the transport-level faults.
func (s *Server) enter(ctx context.Context, method string) error {
	s.mu.Lock()
	s.calls[method]++
	f := s.takeFault(method, Unavailable, ResourceExhausted, PermissionDenied, Hang)
	s.mu.Unlock()
	switch f {
	case Unavailable:
		return status.Error(codes.Unavailable, "kmstest: the service is unavailable")
	case ResourceExhausted:
		return status.Error(codes.ResourceExhausted, "kmstest: quota exceeded for quota metric 'Cryptographic requests' per minute")
	case PermissionDenied:
		return status.Errorf(codes.PermissionDenied, "kmstest: permission denied on %s", method)
	case Hang:
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}
	return nil
}

var (
	keyRingName = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[a-zA-Z0-9_-]{1,63}$`)
	keyID       = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,63}$`)
)

// AddKeyRing creates a key ring (projects/P/locations/L/keyRings/R).
func (s *Server) AddKeyRing(name string) error {
	if !keyRingName.MatchString(name) {
		return fmt.Errorf("kmstest: bad key ring name %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.rings[name]; !ok {
		s.rings[name] = &kmspb.KeyRing{Name: name, CreateTime: timestamppb.Now()}
	}
	return nil
}

// AddKey creates an asymmetric-signing CryptoKey with one version, generated before
// it returns, and returns the version's name.
func (s *Server) AddKey(ring, id string, alg kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm, level kmspb.ProtectionLevel) (string, error) {
	_, err := s.createKey(ring, id, &kmspb.CryptoKey{
		Purpose:         kmspb.CryptoKey_ASYMMETRIC_SIGN,
		VersionTemplate: &kmspb.CryptoKeyVersionTemplate{Algorithm: alg, ProtectionLevel: level},
	}, false)
	if err != nil {
		return "", err
	}
	return s.AddVersion(ring + "/cryptoKeys/" + id)
}

// AddVersion adds an enabled version to a key and returns its name.
func (s *Server) AddVersion(keyName string) (string, error) {
	s.mu.Lock()
	k, ok := s.keys[keyName]
	if !ok {
		s.mu.Unlock()
		return "", fmt.Errorf("kmstest: no key %s", keyName)
	}
	v := s.newVersion(k)
	s.mu.Unlock()
	if err := s.generate(v); err != nil {
		return "", err
	}
	return v.pb.Name, nil
}

// SetState changes a version's state (ENABLED, DISABLED, ...).
func (s *Server) SetState(versionName string, st kmspb.CryptoKeyVersion_CryptoKeyVersionState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.version(versionName)
	if v == nil {
		return fmt.Errorf("kmstest: no key version %s", versionName)
	}
	v.pb.State = st
	return nil
}

// version (s.mu held) finds a version by name.
func (s *Server) version(name string) *keyVersion {
	keyName, _, ok := strings.Cut(name, "/cryptoKeyVersions/")
	if !ok {
		return nil
	}
	k := s.keys[keyName]
	if k == nil {
		return nil
	}
	for _, v := range k.versions {
		if v.pb.Name == name {
			return v
		}
	}
	return nil
}

// newVersion (s.mu held) appends a pending version made from the key's template.
func (s *Server) newVersion(k *cryptoKey) *keyVersion {
	t := k.pb.VersionTemplate
	v := &keyVersion{pb: &kmspb.CryptoKeyVersion{
		Name:            fmt.Sprintf("%s/cryptoKeyVersions/%d", k.pb.Name, len(k.versions)+1),
		State:           kmspb.CryptoKeyVersion_PENDING_GENERATION,
		ProtectionLevel: t.ProtectionLevel,
		Algorithm:       t.Algorithm,
		CreateTime:      timestamppb.Now(),
	}}
	k.versions = append(k.versions, v)
	return v
}

// generate makes the version's software key and enables it.
func (s *Server) generate(v *keyVersion) error {
	priv, err := generateKey(v.pb.Algorithm)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		v.pb.State = kmspb.CryptoKeyVersion_GENERATION_FAILED
		v.pb.GenerationFailureReason = err.Error()
		return err
	}
	v.priv = priv
	v.pb.State = kmspb.CryptoKeyVersion_ENABLED
	v.pb.GenerateTime = timestamppb.Now()
	if v.pb.ProtectionLevel == kmspb.ProtectionLevel_HSM {
		if v.pb.Attestation, err = s.attest.statement(priv.Public()); err != nil {
			return err
		}
	}
	return nil
}

// algorithms are the signing algorithms this server implements: the ones the
// appliance creates, plus RSA SHA-512 variants to show they are listed.
var algorithms = map[kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm]struct {
	hash crypto.Hash
	pss  bool
	bits int // RSA modulus; 0 for EC
}{
	kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256:        {crypto.SHA256, false, 0},
	kmspb.CryptoKeyVersion_EC_SIGN_P384_SHA384:        {crypto.SHA384, false, 0},
	kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256: {crypto.SHA256, false, 2048},
	kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_3072_SHA256: {crypto.SHA256, false, 3072},
	kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_4096_SHA256: {crypto.SHA256, false, 4096},
	kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_4096_SHA512: {crypto.SHA512, false, 4096},
	kmspb.CryptoKeyVersion_RSA_SIGN_PSS_2048_SHA256:   {crypto.SHA256, true, 2048},
	kmspb.CryptoKeyVersion_RSA_SIGN_PSS_3072_SHA256:   {crypto.SHA256, true, 3072},
	kmspb.CryptoKeyVersion_RSA_SIGN_PSS_4096_SHA256:   {crypto.SHA256, true, 4096},
	kmspb.CryptoKeyVersion_RSA_SIGN_PSS_4096_SHA512:   {crypto.SHA512, true, 4096},
}

func generateKey(alg kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm) (crypto.Signer, error) {
	a, ok := algorithms[alg]
	switch {
	case !ok:
		return nil, fmt.Errorf("kmstest: algorithm %v not implemented", alg)
	case alg == kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case alg == kmspb.CryptoKeyVersion_EC_SIGN_P384_SHA384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	}
	return rsa.GenerateKey(rand.Reader, a.bits)
}

// createKey validates and stores a CryptoKey; with firstVersion, its version 1 is
// generated in the background after GenerationDelay.
func (s *Server) createKey(parent, id string, ck *kmspb.CryptoKey, firstVersion bool) (*kmspb.CryptoKey, error) {
	if !keyID.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "crypto_key_id %q must match [a-zA-Z0-9_-]{1,63}", id)
	}
	if ck == nil || ck.Purpose != kmspb.CryptoKey_ASYMMETRIC_SIGN {
		return nil, status.Error(codes.Unimplemented, "kmstest: only ASYMMETRIC_SIGN keys are implemented")
	}
	t := ck.VersionTemplate
	if t == nil {
		return nil, status.Error(codes.InvalidArgument, "version_template.algorithm is required for asymmetric keys")
	}
	if _, ok := algorithms[t.Algorithm]; !ok {
		return nil, status.Errorf(codes.InvalidArgument, "algorithm %v is not an asymmetric signing algorithm", t.Algorithm)
	}
	s.mu.Lock()
	if _, ok := s.rings[parent]; !ok {
		s.mu.Unlock()
		return nil, status.Errorf(codes.NotFound, "KeyRing %s not found", parent)
	}
	name := parent + "/cryptoKeys/" + id
	if _, ok := s.keys[name]; ok {
		s.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "CryptoKey %s already exists", name)
	}
	stored := proto.Clone(ck).(*kmspb.CryptoKey)
	stored.Name, stored.CreateTime = name, timestamppb.Now()
	stored.VersionTemplate = proto.Clone(t).(*kmspb.CryptoKeyVersionTemplate)
	if stored.VersionTemplate.ProtectionLevel == kmspb.ProtectionLevel_PROTECTION_LEVEL_UNSPECIFIED {
		stored.VersionTemplate.ProtectionLevel = kmspb.ProtectionLevel_SOFTWARE
	}
	k := &cryptoKey{pb: stored}
	s.keys[name] = k
	var v *keyVersion
	if firstVersion {
		v = s.newVersion(k)
	}
	out := proto.Clone(stored).(*kmspb.CryptoKey)
	delay := s.GenerationDelay
	s.mu.Unlock()
	if v != nil {
		go func() {
			time.Sleep(delay)
			_ = s.generate(v)
		}()
	}
	return out, nil
}

// KMS methods.

func (s *Server) GetKeyRing(ctx context.Context, req *kmspb.GetKeyRingRequest) (*kmspb.KeyRing, error) {
	if err := s.enter(ctx, "GetKeyRing"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rings[req.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "KeyRing %s not found", req.GetName())
	}
	return proto.Clone(r).(*kmspb.KeyRing), nil
}

func (s *Server) CreateCryptoKey(ctx context.Context, req *kmspb.CreateCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	if err := s.enter(ctx, "CreateCryptoKey"); err != nil {
		return nil, err
	}
	k, err := s.createKey(req.GetParent(), req.GetCryptoKeyId(), req.GetCryptoKey(), !req.GetSkipInitialVersionCreation())
	s.mu.Lock()
	lost := err == nil && s.takeFault("CreateCryptoKey", LoseReply) != 0
	s.mu.Unlock()
	if lost {
		return nil, status.Error(codes.Unavailable, "kmstest: the reply was lost")
	}
	return k, err
}

func (s *Server) GetCryptoKey(ctx context.Context, req *kmspb.GetCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	if err := s.enter(ctx, "GetCryptoKey"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[req.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "CryptoKey %s not found", req.GetName())
	}
	return proto.Clone(k.pb).(*kmspb.CryptoKey), nil
}

// page returns the slice of n items a page token selects, and the next token.
func (s *Server) page(n int, size int32, token string) (from, to int, next string, err error) {
	if token != "" {
		from, err = strconv.Atoi(token)
		if err != nil || from < 0 || from > n {
			return 0, 0, "", status.Errorf(codes.InvalidArgument, "bad page_token %q", token)
		}
	}
	limit := int(size)
	if c := s.PageSize; c > 0 && (limit == 0 || limit > c) {
		limit = c
	}
	if limit <= 0 || limit > 100 {
		limit = 100
	}
	to = min(from+limit, n)
	if to < n {
		next = strconv.Itoa(to)
	}
	return from, to, next, nil
}

func (s *Server) ListCryptoKeys(ctx context.Context, req *kmspb.ListCryptoKeysRequest) (*kmspb.ListCryptoKeysResponse, error) {
	if err := s.enter(ctx, "ListCryptoKeys"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.rings[req.GetParent()]; !ok {
		return nil, status.Errorf(codes.NotFound, "KeyRing %s not found", req.GetParent())
	}
	var names []string
	for name := range s.keys {
		if strings.HasPrefix(name, req.GetParent()+"/cryptoKeys/") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	from, to, next, err := s.page(len(names), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &kmspb.ListCryptoKeysResponse{NextPageToken: next, TotalSize: int32(len(names))}
	for _, name := range names[from:to] {
		resp.CryptoKeys = append(resp.CryptoKeys, proto.Clone(s.keys[name].pb).(*kmspb.CryptoKey))
	}
	return resp, nil
}

func (s *Server) ListCryptoKeyVersions(ctx context.Context, req *kmspb.ListCryptoKeyVersionsRequest) (*kmspb.ListCryptoKeyVersionsResponse, error) {
	if err := s.enter(ctx, "ListCryptoKeyVersions"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[req.GetParent()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "CryptoKey %s not found", req.GetParent())
	}
	from, to, next, err := s.page(len(k.versions), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &kmspb.ListCryptoKeyVersionsResponse{NextPageToken: next, TotalSize: int32(len(k.versions))}
	for _, v := range k.versions[from:to] {
		pb := proto.Clone(v.pb).(*kmspb.CryptoKeyVersion)
		if req.GetView() != kmspb.CryptoKeyVersion_FULL {
			pb.Attestation = nil // as in Cloud KMS: the FULL view carries it
		}
		resp.CryptoKeyVersions = append(resp.CryptoKeyVersions, pb)
	}
	return resp, nil
}

func (s *Server) GetCryptoKeyVersion(ctx context.Context, req *kmspb.GetCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	if err := s.enter(ctx, "GetCryptoKeyVersion"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.version(req.GetName())
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "CryptoKeyVersion %s not found", req.GetName())
	}
	return proto.Clone(v.pb).(*kmspb.CryptoKeyVersion), nil
}

func (s *Server) DestroyCryptoKeyVersion(ctx context.Context, req *kmspb.DestroyCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	if err := s.enter(ctx, "DestroyCryptoKeyVersion"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.version(req.GetName())
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "CryptoKeyVersion %s not found", req.GetName())
	}
	switch v.pb.State {
	case kmspb.CryptoKeyVersion_ENABLED, kmspb.CryptoKeyVersion_DISABLED:
	default:
		return nil, status.Errorf(codes.FailedPrecondition, "CryptoKeyVersion %s is %v", req.GetName(), v.pb.State)
	}
	v.pb.State = kmspb.CryptoKeyVersion_DESTROY_SCHEDULED
	v.pb.DestroyTime = timestamppb.New(time.Now().Add(24 * time.Hour))
	return proto.Clone(v.pb).(*kmspb.CryptoKeyVersion), nil
}

// usable (s.mu held) finds an enabled version, as GetPublicKey and AsymmetricSign need.
func (s *Server) usable(name string) (*keyVersion, error) {
	v := s.version(name)
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "CryptoKeyVersion %s not found", name)
	}
	if v.pb.State != kmspb.CryptoKeyVersion_ENABLED {
		return nil, status.Errorf(codes.FailedPrecondition, "CryptoKeyVersion %s is not enabled, current state is: %v", name, v.pb.State)
	}
	return v, nil
}

func (s *Server) GetPublicKey(ctx context.Context, req *kmspb.GetPublicKeyRequest) (*kmspb.PublicKey, error) {
	if err := s.enter(ctx, "GetPublicKey"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.usable(req.GetName())
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(v.priv.Public())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	p := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	sum := crc32c([]byte(p))
	if s.takeFault("GetPublicKey", BadPublicKeyCRC) != 0 {
		sum ^= 1
	}
	return &kmspb.PublicKey{Pem: p, PemCrc32C: wrapperspb.Int64(sum), Algorithm: v.pb.Algorithm,
		Name: v.pb.Name, ProtectionLevel: v.pb.ProtectionLevel}, nil
}

func (s *Server) AsymmetricSign(ctx context.Context, req *kmspb.AsymmetricSignRequest) (*kmspb.AsymmetricSignResponse, error) {
	if err := s.enter(ctx, "AsymmetricSign"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	v, err := s.usable(req.GetName())
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	priv, alg, level := v.priv, v.pb.Algorithm, v.pb.ProtectionLevel
	s.mu.Unlock()

	a := algorithms[alg]
	var digest []byte
	var hash crypto.Hash
	switch d := req.GetDigest().GetDigest().(type) {
	case *kmspb.Digest_Sha256:
		digest, hash = d.Sha256, crypto.SHA256
	case *kmspb.Digest_Sha384:
		digest, hash = d.Sha384, crypto.SHA384
	case *kmspb.Digest_Sha512:
		digest, hash = d.Sha512, crypto.SHA512
	default:
		return nil, status.Error(codes.InvalidArgument, "kmstest: a digest is required")
	}
	if hash != a.hash || len(digest) != hash.Size() {
		return nil, status.Errorf(codes.InvalidArgument, "digest of %d bytes (%v) does not fit algorithm %v", len(digest), hash, alg)
	}
	verified := false
	if c := req.GetDigestCrc32C(); c != nil {
		if c.GetValue() != crc32c(digest) {
			return nil, status.Error(codes.InvalidArgument, "the checksum in field digest_crc32c did not match the data in field digest")
		}
		verified = true
	}
	var opts crypto.SignerOpts = hash
	if a.pss {
		opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: hash}
	}
	sig, err := priv.Sign(rand.Reader, digest, opts)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &kmspb.AsymmetricSignResponse{Signature: sig, SignatureCrc32C: wrapperspb.Int64(crc32c(sig)),
		VerifiedDigestCrc32C: verified, Name: req.GetName(), ProtectionLevel: level}

	s.mu.Lock()
	f := s.takeFault("AsymmetricSign", BadSignatureCRC, UnverifiedDigest, WrongName, CorruptSignature)
	s.mu.Unlock()
	switch f {
	case BadSignatureCRC:
		resp.SignatureCrc32C = wrapperspb.Int64(resp.SignatureCrc32C.GetValue() ^ 0x10)
	case UnverifiedDigest:
		resp.VerifiedDigestCrc32C = false
	case WrongName:
		resp.Name = strings.TrimSuffix(req.GetName(), "1") + "9"
	case CorruptSignature:
		resp.Signature = append([]byte(nil), sig...)
		resp.Signature[len(sig)/2] ^= 0x01
		resp.SignatureCrc32C = wrapperspb.Int64(crc32c(resp.Signature))
	}
	return resp, nil
}

// ErrNoKey is returned by PublicKey for unknown or pending versions.
var ErrNoKey = errors.New("kmstest: no such key version")

// PublicKey returns a version's public key, for tests that check signatures.
func (s *Server) PublicKey(versionName string) (crypto.PublicKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.version(versionName)
	if v == nil || v.priv == nil {
		return nil, ErrNoKey
	}
	return v.priv.Public(), nil
}
