package web

import (
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// ErrNotConfirmed: a destructive action whose confirmation does not name the slot.
var ErrNotConfirmed = errors.New("type the slot's id to confirm")

func (s *Server) actionRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /pin", s.page(s.pinPage))
	mux.HandleFunc("POST /pin", s.form(s.setPIN))
	mux.HandleFunc("GET /sign", s.page(s.signPage))
	mux.HandleFunc("POST /sign", s.form(s.sign))
	mux.HandleFunc("GET /clear", s.page(s.clearPage))
	mux.HandleFunc("POST /clear", s.form(s.clear))
	mux.HandleFunc("GET /system", s.page(s.systemPage))
	mux.HandleFunc("POST /reload", s.form(s.reload))
	mux.HandleFunc("POST /restart", s.form(s.restart))
	mux.HandleFunc("GET /audit", s.page(s.auditPage))
	mux.HandleFunc("GET /ota", s.page(s.otaPage))
	mux.HandleFunc("POST /ota", s.form(s.otaUpdate))
}

func (s *Server) pinPage(w http.ResponseWriter, r *http.Request, ses *session) {
	s.render(w, r, http.StatusOK, "pin", ses, map[string]any{"HSM": r.URL.Query().Get("hsm")})
}

func (s *Server) setPIN(w http.ResponseWriter, r *http.Request, ses *session) {
	a := protocol.HSMSetPINArgs{HSM: r.PostFormValue("hsm"), PIN: r.PostFormValue("pin"), Persist: r.PostFormValue("persist") == "on"}
	var res protocol.SetPINResult
	if err := s.exec(r, ses, protocol.CmdHSMSetPIN, a, &res); err != nil {
		s.render(w, r, errStatus(err), "pin", ses, map[string]any{"HSM": a.HSM, "Error": err.Error()})
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) signPage(w http.ResponseWriter, r *http.Request, ses *session) {
	s.render(w, r, http.StatusOK, "sign", ses, map[string]any{"SlotID": r.URL.Query().Get("slot"), "Validity": "8760h", "IsCA": true, "PathLen": "0"})
}

// sign issues a certificate for a pasted CSR: how a root on this appliance signs an
// intermediate's CSR without a console.
func (s *Server) sign(w http.ResponseWriter, r *http.Request, ses *session) {
	p := &protocol.Profile{Validity: r.PostFormValue("validity"), IsCA: r.PostFormValue("is_ca") == "on"}
	data := map[string]any{"SlotID": r.PostFormValue("slot"), "Validity": p.Validity, "IsCA": p.IsCA,
		"PathLen": r.PostFormValue("max_path_len"), "CSR": r.PostFormValue("csr")}
	if v := strings.TrimSpace(r.PostFormValue("max_path_len")); p.IsCA && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			data["Error"] = "max path length: a number, or empty for none"
			s.render(w, r, http.StatusBadRequest, "sign", ses, data)
			return
		}
		p.MaxPathLen = &n
	}
	a := protocol.SignArgs{SlotID: r.PostFormValue("slot"), Kind: protocol.KindCertificate, CSR: r.PostFormValue("csr"), Profile: p}
	var res protocol.SignResult
	if err := s.exec(r, ses, protocol.CmdSign, a, &res); err != nil {
		data["Error"] = err.Error()
		s.render(w, r, errStatus(err), "sign", ses, data)
		return
	}
	data["Issued"] = res.Certificate
	data["Cert"] = decodeCerts(res.Certificate)
	s.render(w, r, http.StatusOK, "sign", ses, data)
}

func (s *Server) clearPage(w http.ResponseWriter, r *http.Request, ses *session) {
	var show protocol.SlotShow
	if err := s.exec(r, ses, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: r.URL.Query().Get("slot")}, &show); err != nil {
		s.failExec(w, r, ses, err)
		return
	}
	s.render(w, r, http.StatusOK, "clear", ses, map[string]any{"Slot": show})
}

// clear empties a slot once the operator typed its id on a page that named its
// subject: the slot and, when asked, the key cannot be brought back.
func (s *Server) clear(w http.ResponseWriter, r *http.Request, ses *session) {
	slotID := r.PostFormValue("slot")
	if strings.TrimSpace(r.PostFormValue("confirm")) != slotID || slotID == "" {
		var show protocol.SlotShow
		if err := s.exec(r, ses, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: slotID}, &show); err != nil {
			s.failExec(w, r, ses, err)
			return
		}
		s.render(w, r, http.StatusBadRequest, "clear", ses, map[string]any{"Slot": show, "Error": ErrNotConfirmed.Error()})
		return
	}
	a := protocol.ClearArgs{SlotID: slotID, DestroyKey: r.PostFormValue("destroy_key") == "on"}
	if err := s.exec(r, ses, protocol.CmdSlotClear, a, nil); err != nil {
		s.failExec(w, r, ses, err)
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) systemPage(w http.ResponseWriter, r *http.Request, ses *session) {
	s.render(w, r, http.StatusOK, "system", ses, nil)
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request, ses *session) {
	var res protocol.ReloadResult
	if err := s.exec(r, ses, protocol.CmdReload, struct{}{}, &res); err != nil {
		s.render(w, r, errStatus(err), "system", ses, map[string]any{"Error": err.Error()})
		return
	}
	s.render(w, r, http.StatusOK, "system", ses, map[string]any{"Reload": res})
}

func (s *Server) restart(w http.ResponseWriter, r *http.Request, ses *session) {
	var res protocol.RestartResult
	if err := s.exec(r, ses, protocol.CmdRestart, struct{}{}, &res); err != nil {
		s.render(w, r, errStatus(err), "system", ses, map[string]any{"Error": err.Error()})
		return
	}
	s.render(w, r, http.StatusOK, "system", ses, map[string]any{"Restart": res,
		"Notice": "The appliance is restarting; this page reconnects by itself."})
}

// auditPage shows the newest records and checks the whole trail's hash chain.
func (s *Server) auditPage(w http.ResponseWriter, r *http.Request, ses *session) {
	var tail protocol.AuditTailResult
	if err := s.exec(r, ses, protocol.CmdAuditTail, protocol.AuditTailArgs{N: 100}, &tail); err != nil {
		s.failExec(w, r, ses, err)
		return
	}
	for i, j := 0, len(tail.Records)-1; i < j; i, j = i+1, j-1 {
		tail.Records[i], tail.Records[j] = tail.Records[j], tail.Records[i]
	}
	data := map[string]any{"Tail": tail}
	if s.opts.AuditPath != "" {
		f, err := os.Open(s.opts.AuditPath)
		if err == nil {
			head, n, verr := audit.VerifyHead(f)
			f.Close()
			err = verr
			data["Verified"], data["VerifiedHead"] = n, head.Hash
		}
		if err != nil {
			data["VerifyError"] = err.Error()
		}
	}
	s.render(w, r, http.StatusOK, "audit", ses, data)
}

func (s *Server) otaPage(w http.ResponseWriter, r *http.Request, ses *session) {
	var st protocol.OTAStatus
	err := s.exec(r, ses, protocol.CmdOTAStatus, struct{}{}, &st)
	data := map[string]any{"OTA": st}
	if err != nil {
		data["Error"] = err.Error()
	}
	s.render(w, r, http.StatusOK, "ota", ses, data)
}

func (s *Server) otaUpdate(w http.ResponseWriter, r *http.Request, ses *session) {
	size, _ := strconv.ParseInt(strings.TrimSpace(r.PostFormValue("size")), 10, 64)
	a := protocol.OTAUpdateArgs{URL: strings.TrimSpace(r.PostFormValue("url")), SHA256: strings.TrimSpace(r.PostFormValue("sha256")),
		Size: size, Signature: r.PostFormValue("signature")}
	var st protocol.OTAStatus
	if err := s.exec(r, ses, protocol.CmdOTAUpdate, a, &st); err != nil {
		s.render(w, r, errStatus(err), "ota", ses, map[string]any{"OTA": st, "Error": err.Error()})
		return
	}
	http.Redirect(w, r, "/ota", http.StatusSeeOther)
}
