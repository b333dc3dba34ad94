package web

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// certView is a certificate's fields as the certificate page shows them.
type certView struct {
	Subject, Issuer, Serial string
	NotBefore, NotAfter     time.Time
	IsCA                    bool
	PathLen                 string
	KeyUsage                []string
	Names                   []string
	SHA256                  string
	SelfSigned              bool
}

func decodeCerts(pemText string) []certView {
	var out []certView
	rest := []byte(pemText)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil || b.Type != "CERTIFICATE" {
			continue
		}
		out = append(out, viewCert(c))
	}
}

func viewCert(c *x509.Certificate) certView {
	v := certView{Subject: c.Subject.String(), Issuer: c.Issuer.String(), Serial: hex.EncodeToString(c.SerialNumber.Bytes()),
		NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(), IsCA: c.IsCA, SHA256: Fingerprint(c.Raw),
		SelfSigned: c.CheckSignatureFrom(c) == nil, Names: c.DNSNames, KeyUsage: keyUsages(c.KeyUsage)}
	switch {
	case !c.IsCA:
	case c.MaxPathLen > 0 || c.MaxPathLenZero:
		v.PathLen = fmt.Sprint(c.MaxPathLen)
	default:
		v.PathLen = "unlimited"
	}
	return v
}

func keyUsages(u x509.KeyUsage) []string {
	names := []string{"digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment",
		"keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly"}
	var out []string
	for i, n := range names {
		if u&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

func (s *Server) slotPage(w http.ResponseWriter, r *http.Request, ses *session) {
	var show protocol.SlotShow
	if err := s.exec(r, ses, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: r.URL.Query().Get("slot")}, &show); err != nil {
		s.failExec(w, r, ses, err)
		return
	}
	s.render(w, r, http.StatusOK, "slot", ses, map[string]any{
		"Slot": show, "Cert": decodeCerts(show.Certificate), "Chain": decodeCerts(show.Chain)})
}

// certDownload sends the slot's certificate, with its chain when asked, as a file.
func (s *Server) certDownload(w http.ResponseWriter, r *http.Request, ses *session) {
	var show protocol.SlotShow
	if err := s.exec(r, ses, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: r.URL.Query().Get("slot")}, &show); err != nil {
		s.failExec(w, r, ses, err)
		return
	}
	if show.Certificate == "" {
		s.fail(w, r, ses, http.StatusNotFound, fmt.Errorf("%s has no certificate yet", show.SlotID))
		return
	}
	body := show.Certificate
	if r.URL.Query().Get("chain") == "1" {
		body = strings.TrimRight(body, "\n") + "\n" + show.Chain
	}
	name := strings.NewReplacer("/", "-", "\\", "-", "\"", "").Replace(show.SlotID)
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.pem"`)
	fmt.Fprint(w, body)
}
