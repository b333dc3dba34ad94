package web

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/iot-hsm/iot-hsm/protocol"
)

func (s *Server) wizardRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /provision", s.page(s.provisionPage))
	mux.HandleFunc("POST /provision", s.form(s.provision))
	mux.HandleFunc("GET /wizard", s.page(s.wizardPage))
	mux.HandleFunc("POST /wizard/root", s.form(s.provCert(protocol.CmdSlotSelfSign)))
	mux.HandleFunc("POST /wizard/csr", s.form(s.provCert(protocol.CmdSlotCSR)))
	mux.HandleFunc("POST /wizard/import", s.form(s.importCert))
	mux.HandleFunc("GET /slot", s.page(s.slotPage))
	mux.HandleFunc("GET /slot/cert.pem", s.page(s.certDownload))
}

// keyTypes are the choices of the wizard's first step.
var keyTypes = []string{"p256", "p384", "rsa2048", "rsa3072", "rsa4096"}

func slotURL(path, slotID string) string { return path + "?slot=" + url.QueryEscape(slotID) }

func (s *Server) provisionPage(w http.ResponseWriter, r *http.Request, ses *session) {
	s.renderProvision(w, r, ses, http.StatusOK, nil, protocol.ProvisionArgs{HSM: r.URL.Query().Get("hsm"), Mode: "generate", KeyType: "p256"})
}

func (s *Server) renderProvision(w http.ResponseWriter, r *http.Request, ses *session, status int, err error, a protocol.ProvisionArgs) {
	// The key and its password are never sent back to the browser.
	a.KeyPEM, a.KeyPassword = "", ""
	data := map[string]any{"Args": a, "KeyTypes": keyTypes}
	if err != nil {
		data["Error"] = err.Error()
	}
	s.render(w, r, status, "provision", ses, data)
}

func (s *Server) provision(w http.ResponseWriter, r *http.Request, ses *session) {
	a := protocol.ProvisionArgs{
		HSM: r.PostFormValue("hsm"), Slot: strings.TrimSpace(r.PostFormValue("slot")), Mode: r.PostFormValue("mode"),
		Label: r.PostFormValue("label"), Overwrite: r.PostFormValue("overwrite") == "on",
	}
	switch a.Mode {
	case "generate":
		a.KeyType = r.PostFormValue("key_type")
	case "import":
		a.KeyPEM, a.KeyPassword = r.PostFormValue("key_pem"), r.PostFormValue("key_password")
	}
	if a.Overwrite && strings.TrimSpace(r.PostFormValue("confirm")) != a.HSM+"/"+a.Slot {
		s.confirmOverwrite(w, r, ses, a)
		return
	}
	var res protocol.ProvisionResult
	if err := s.exec(r, ses, protocol.CmdSlotProvision, a, &res); err != nil {
		s.renderProvision(w, r, ses, errStatus(err), err, a)
		return
	}
	http.Redirect(w, r, slotURL("/wizard", res.SlotID), http.StatusSeeOther)
}

// confirmOverwrite asks again before a provisioning that replaces a slot's key,
// naming the certificate's subject that goes with it.
func (s *Server) confirmOverwrite(w http.ResponseWriter, r *http.Request, ses *session, a protocol.ProvisionArgs) {
	id := a.HSM + "/" + a.Slot
	var show protocol.SlotShow
	subject := ""
	if s.exec(r, ses, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: id}, &show) == nil {
		subject = show.Subject
	}
	a.KeyPEM, a.KeyPassword = "", ""
	s.render(w, r, http.StatusBadRequest, "provision", ses, map[string]any{"Args": a, "KeyTypes": keyTypes,
		"Error": ErrNotConfirmed.Error(), "Confirm": id, "Doomed": subject})
}

// wizardPage resumes the wizard where the slot stands: the provisioning
// certificate for a key, the CSR and the import for a CSR, the certificate after.
func (s *Server) wizardPage(w http.ResponseWriter, r *http.Request, ses *session) {
	var show protocol.SlotShow
	if err := s.exec(r, ses, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: r.URL.Query().Get("slot")}, &show); err != nil {
		s.failExec(w, r, ses, err)
		return
	}
	if show.State == "provisioned" && r.URL.Query().Get("step") != "import" {
		http.Redirect(w, r, slotURL("/slot", show.SlotID), http.StatusSeeOther)
		return
	}
	s.render(w, r, http.StatusOK, "wizard", ses, map[string]any{"Slot": show})
}

// renderWizard shows the wizard again with err, for the slot the form named.
func (s *Server) renderWizard(w http.ResponseWriter, r *http.Request, ses *session, err error) {
	var show protocol.SlotShow
	if serr := s.exec(r, ses, protocol.CmdSlotShow, protocol.SlotIDArgs{SlotID: r.PostFormValue("slot")}, &show); serr != nil {
		s.failExec(w, r, ses, err)
		return
	}
	s.render(w, r, errStatus(err), "wizard", ses, map[string]any{"Slot": show, "Error": err.Error()})
}

// provCert is the wizard's second step: a self-signed root, or a CSR for a parent.
func (s *Server) provCert(cmd string) func(http.ResponseWriter, *http.Request, *session) {
	return func(w http.ResponseWriter, r *http.Request, ses *session) {
		a := protocol.ProvisioningCertArgs{SlotID: r.PostFormValue("slot"), ProvisioningCert: r.PostFormValue("provisioning_cert")}
		if err := s.exec(r, ses, cmd, a, nil); err != nil {
			s.renderWizard(w, r, ses, err)
			return
		}
		if cmd == protocol.CmdSlotSelfSign {
			http.Redirect(w, r, slotURL("/slot", a.SlotID), http.StatusSeeOther)
			return
		}
		http.Redirect(w, r, slotURL("/wizard", a.SlotID)+"&csr=new", http.StatusSeeOther)
	}
}

func (s *Server) importCert(w http.ResponseWriter, r *http.Request, ses *session) {
	a := protocol.ImportCertArgs{SlotID: r.PostFormValue("slot"), Certificate: r.PostFormValue("certificate"), Chain: r.PostFormValue("chain")}
	if err := s.exec(r, ses, protocol.CmdSlotImport, a, nil); err != nil {
		s.renderWizard(w, r, ses, err)
		return
	}
	http.Redirect(w, r, slotURL("/slot", a.SlotID), http.StatusSeeOther)
}
