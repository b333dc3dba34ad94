package appliance

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"time"

	"github.com/iot-hsm/iot-hsm/auth"
	"github.com/iot-hsm/iot-hsm/config"
)

// trustVerifier makes the request verifier from the controllers' bundle and CRLs;
// nil when no bundle is configured (requests are then not required to be signed).
// sum stands for what it was made of, the files' contents included, so that a
// reload sees a bundle or CRL replaced behind an unchanged path.
func trustVerifier(t config.Trust) (v *auth.Verifier, sum string, err error) {
	pemData, err := t.ReadControllers()
	if err != nil {
		return nil, "", err
	}
	crlData, err := t.ReadControllersCRL()
	if err != nil || pemData == nil {
		return nil, "", err
	}
	if v, err = auth.NewVerifier(pemData); err != nil {
		return nil, "", fmt.Errorf("%w: trust.controllers: %v", config.ErrInvalid, err)
	}
	if crlData != nil {
		if err := v.LoadCRLs(crlData); err != nil {
			return nil, "", fmt.Errorf("%w: trust.controllers_crl: %w", config.ErrInvalid, err)
		}
	}
	v.RequireTopic = t.RequireTopic
	for _, s := range v.StaleCRLs(time.Now()) {
		slog.Warn("controllers CRL outdated: signed requests under its CA are refused until a current CRL is installed and the configuration reloaded",
			"crl", s, "file", t.ControllersCRL)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d:%s%d:%s%v", len(pemData), pemData, len(crlData), crlData, t.RequireTopic)
	return v, fmt.Sprintf("%x", h.Sum(nil)), nil
}

// reloadTrust reads [trust] again and, when the bundle, the CRLs or require_topic
// changed, swaps the device's verifier whole. A bundle or CRL that does not load
// changes nothing: the running verifier stays, the reload reports why, and ok is
// false.
func (a *Appliance) reloadTrust(t config.Trust) (applied, problems []string, ok bool) {
	v, sum, err := trustVerifier(t)
	if err != nil {
		slog.Error("trust not reloaded; the running controllers bundle and CRLs stay in force", "err", err)
		return nil, []string{"trust: " + err.Error() + "; the running controllers bundle and CRLs stay in force"}, false
	}
	if v != nil {
		for _, s := range v.StaleCRLs(time.Now()) {
			problems = append(problems, "trust: "+s+"; requests under that CA are refused")
		}
	}
	if sum == a.trustSum {
		return nil, problems, true
	}
	a.Device.SetVerifier(v)
	a.trustSum = sum
	if v == nil {
		slog.Warn("trust.controllers removed: unsigned requests are executed again")
	}
	return []string{"trust"}, problems, true
}
