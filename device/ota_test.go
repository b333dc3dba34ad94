package device

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/auth"
	"github.com/iot-hsm/iot-hsm/protocol"
)

func TestOTACommands(t *testing.T) {
	var got protocol.OTAUpdateArgs
	log, err := audit.Open(filepath.Join(t.TempDir(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	d, tr, _ := startDevice(t, Options{Audit: log, OTA: OTAHooks{
		Update: func(a protocol.OTAUpdateArgs) (any, error) {
			got = a
			if strings.Contains(a.URL, "busy") {
				return nil, fmt.Errorf("%w: an update is already in progress", ErrConflict)
			}
			return protocol.OTAStatus{Mode: "binary", Phase: protocol.OTADownload}, nil
		},
		Status: func() any { return protocol.OTAStatus{Mode: "binary", Phase: protocol.OTAIdle} },
	}})
	request(d, protocol.CmdOTAUpdate, "u1", `{"url":"http://x/bin","sha256":"ab","size":3,"signature":"sig"}`)
	if r := tr.reply(t, d, "u1"); !r.OK || !strings.Contains(string(r.Result), `"download"`) || got.Signature != "sig" {
		t.Errorf("ota.update: %+v %s %+v", r.Error, r.Result, got)
	}
	request(d, protocol.CmdOTAUpdate, "u2", `{"url":"http://x/bin"}`)
	if r := tr.reply(t, d, "u2"); r.OK || r.Error.Code != protocol.CodeBadRequest {
		t.Errorf("ota.update without sha256/size: %+v", r.Error)
	}
	request(d, protocol.CmdOTAUpdate, "u3", `{"url":"http://user:secret@busy/img?X-Amz-Signature=s3cr3t","sha256":"ab","size":3}`)
	if r := tr.reply(t, d, "u3"); r.OK || r.Error.Code != protocol.CodeConflict {
		t.Errorf("ota.update while one runs: %+v", r.Error)
	}
	request(d, protocol.CmdOTAStatus, "s1", "")
	if r := tr.reply(t, d, "s1"); !r.OK || !strings.Contains(string(r.Result), `"idle"`) {
		t.Errorf("ota.status: %+v %s", r.Error, r.Result)
	}

	// An update changes what runs: who asked for which image is in the trail, the
	// refused one too; reading the status is not.
	var recs []string
	for _, r := range log.Tail(0) {
		recs = append(recs, fmt.Sprintf("%s %s %s %s %s", r.RequestID, r.Command, r.Result, r.Subject, r.Digest))
	}
	want := []string{"u1 ota.update ok http://x/bin ab", "u3 ota.update conflict http://busy/img ab"}
	if strings.Join(recs, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit trail:\n%s\nwant\n%s", strings.Join(recs, "\n"), strings.Join(want, "\n"))
	}
}

func TestOTAUnsupportedWithoutHooks(t *testing.T) {
	d, tr, _ := startDevice(t, Options{})
	request(d, protocol.CmdOTAStatus, "s1", "")
	if r := tr.reply(t, d, "s1"); r.OK || r.Error.Code != protocol.CodeUnsupported {
		t.Errorf("ota.status without hooks: %+v", r.Error)
	}
}

// controller makes a controllers CA and one controller certificate it issued, with
// its key.
func controller(t *testing.T, name string) (bundle []byte, key crypto.Signer, cert *x509.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	ca, _ := x509.ParseCertificate(der)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{auth.ControllerEKU}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, leafKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), leafKey, cert
}

func requestSigned(t *testing.T, d *Device, cmd, id, args string, key crypto.Signer, cert *x509.Certificate) {
	t.Helper()
	exp := time.Now().Add(time.Minute).UTC().Format(time.RFC3339)
	payload := []byte(fmt.Sprintf(`{"id":%q,"expires_at":%q,"args":%s}`, id, exp, args))
	signed, err := auth.Sign(payload, key, []*x509.Certificate{cert}, d.Topics().Cmd(cmd))
	if err != nil {
		t.Fatal(err)
	}
	d.Handle(d.Topics().Cmd(cmd), signed)
}

// TestOTAAllowDowngradeNeedsController: allow_downgrade reaches the updater only in
// a request signed by a trusted controller; unsigned, or signed by a certificate no
// controllers bundle vouches for, it is unauthorized and the attempt is audited.
func TestOTAAllowDowngradeNeedsController(t *testing.T) {
	const args = `{"url":"http://x/old","sha256":"ab","size":3,"signature":"sig","allow_downgrade":true}`
	bundle, key, cert := controller(t, "controller")
	_, strangerKey, strangerCert := controller(t, "stranger")
	v, err := auth.NewVerifier(bundle)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		verifier *auth.Verifier
		send     func(d *Device, id string)
		want     string // the reply's error code, "" for ok
	}{
		{"unsigned", nil, func(d *Device, id string) { request(d, protocol.CmdOTAUpdate, id, args) }, protocol.CodeUnauthorized},
		{"self-vouched", nil, func(d *Device, id string) {
			requestSigned(t, d, protocol.CmdOTAUpdate, id, args, strangerKey, strangerCert)
		}, protocol.CodeUnauthorized},
		{"controller", v, func(d *Device, id string) {
			requestSigned(t, d, protocol.CmdOTAUpdate, id, args, key, cert)
		}, ""},
	} {
		log, err := audit.Open(filepath.Join(t.TempDir(), "audit.log"))
		if err != nil {
			t.Fatal(err)
		}
		var got []protocol.OTAUpdateArgs
		d, tr, _ := startDevice(t, Options{Audit: log, Verifier: c.verifier, OTA: OTAHooks{
			Update: func(a protocol.OTAUpdateArgs) (any, error) {
				got = append(got, a)
				return protocol.OTAStatus{Phase: protocol.OTADownload}, nil
			},
			Status: func() any { return protocol.OTAStatus{} },
		}})
		c.send(d, "d1")
		r := tr.reply(t, d, "d1")
		code := ""
		if r.Error != nil {
			code = r.Error.Code
		}
		if code != c.want {
			t.Errorf("%s: reply %+v, want code %q", c.name, r.Error, c.want)
		}
		if ran := len(got) == 1 && got[0].AllowDowngrade; ran != (c.want == "") {
			t.Errorf("%s: the updater got %+v", c.name, got)
		}
		result := c.want
		if result == "" {
			result = "ok"
		}
		recs := log.Tail(0)
		if len(recs) != 1 || recs[0].Note != "allow_downgrade" || recs[0].Result != result {
			t.Errorf("%s: audit trail %+v", c.name, recs)
		}
		log.Close()
	}
}
