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
	for _, c := range decodeRaw(pemText) {
		out = append(out, viewCert(c))
	}
	return out
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
	chain := show.Chain
	if chain == "" {
		chain = s.localChain(r, ses, show.Certificate)
	}
	s.render(w, r, http.StatusOK, "slot", ses, map[string]any{
		"Slot": show, "Cert": decodeCerts(show.Certificate), "Chain": decodeCerts(chain), "ChainPEM": chain})
}

// maxChain bounds the walk up the issuers.
const maxChain = 8

// localChain finds the issuers of a certificate among the CA certificates of this
// appliance's other slots (an intermediate imported without a chain, whose root is
// here), walking up by signature until a self-signed one.
func (s *Server) localChain(r *http.Request, ses *session, certPEM string) string {
	certs := decodeRaw(certPEM)
	d := s.device()
	if len(certs) == 0 || d == nil {
		return ""
	}
	var cas []*x509.Certificate
	for _, sl := range d.Status().Slots {
		var show protocol.SlotShow
		if sl.State == "provisioned" && s.exec(r, ses, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: sl.SlotID}, &show) == nil {
			cas = append(cas, decodeRaw(show.Certificate)...)
		}
	}
	var out strings.Builder
	for c := certs[0]; len(cas) > 0 && c.CheckSignatureFrom(c) != nil; {
		parent := issuerOf(c, cas)
		if parent == nil || out.Len() > maxChain*4096 {
			break
		}
		out.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: parent.Raw}))
		c = parent
	}
	return out.String()
}

func issuerOf(c *x509.Certificate, cas []*x509.Certificate) *x509.Certificate {
	for _, p := range cas {
		if !p.Equal(c) && c.CheckSignatureFrom(p) == nil {
			return p
		}
	}
	return nil
}

func decodeRaw(pemText string) []*x509.Certificate {
	var out []*x509.Certificate
	rest := []byte(pemText)
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil && b.Type == "CERTIFICATE" {
			out = append(out, c)
		}
	}
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
		chain := show.Chain
		if chain == "" {
			chain = s.localChain(r, ses, show.Certificate)
		}
		body = strings.TrimRight(body, "\n") + "\n" + chain
	}
	name := strings.NewReplacer("/", "-", "\\", "-", "\"", "").Replace(show.SlotID)
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.pem"`)
	fmt.Fprint(w, body)
}
