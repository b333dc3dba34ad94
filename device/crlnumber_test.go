package device

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/device/slots"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// A CRL number not greater than the last one signed for that CA is refused with
// conflict and the last number in details; slot.show tells the last number, and the
// counter survives a restart of the device.
func TestCRLNumberMustGrow(t *testing.T) {
	c := newCore(t)
	d, tr := startCore(t, c, Options{})
	if rep := call(t, d, tr, protocol.CmdSlotProvision, "gen",
		protocol.ProvisionArgs{HSM: c.hsmID, Slot: "01", Mode: slots.ModeGenerate, KeyType: "p256"}); !rep.OK {
		t.Fatalf("generate: %+v", rep.Error)
	}
	slotID := c.hsmID + "/01"
	if rep := call(t, d, tr, protocol.CmdSlotSelfSign, "root",
		protocol.ProvisioningCertArgs{SlotID: slotID, ProvisioningCert: string(provisioningCert(t, "CRL Root", 1))}); !rep.OK {
		t.Fatalf("selfsign: %+v", rep.Error)
	}
	next := time.Now().Add(time.Hour).UTC()
	crl := func(id, number string) protocol.Reply {
		return call(t, d, tr, protocol.CmdSign, id,
			protocol.SignArgs{SlotID: slotID, Kind: protocol.KindCRL, Number: json.Number(number), NextUpdate: &next})
	}
	if last := show(t, d, tr, slotID, "show0").LastCRLNumber; last != "" {
		t.Fatalf("last_crl_number before any CRL: %q", last)
	}
	rep := crl("crl5", "5")
	if !rep.OK {
		t.Fatalf("CRL 5: %+v", rep.Error)
	}
	var res protocol.SignResult
	if err := json.Unmarshal(rep.Result, &res); err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(res.CRL))
	list, err := x509.ParseRevocationList(b.Bytes)
	if err != nil || list.Number.Int64() != 5 {
		t.Fatalf("signed CRL: %v %v", list, err)
	}
	for _, n := range []string{"5", "3"} {
		rep := crl("crl-again-"+n, n)
		if rep.OK || rep.Error.Code != protocol.CodeConflict || fmt.Sprint(rep.Error.Details["last_crl_number"]) != "5" {
			t.Fatalf("CRL %s after 5: %+v", n, rep.Error)
		}
	}
	if last := show(t, d, tr, slotID, "show1").LastCRLNumber; last != "5" {
		t.Fatalf("last_crl_number: %q, want 5", last)
	}

	d.Stop()
	d, tr = startCore(t, c, Options{})
	if rep := call(t, d, tr, protocol.CmdSign, "crl-restart",
		protocol.SignArgs{SlotID: slotID, Kind: protocol.KindCRL, Number: "4", NextUpdate: &next}); rep.OK || rep.Error.Code != protocol.CodeConflict {
		t.Fatalf("CRL 4 after a restart: %+v", rep.Error)
	}
	if rep := call(t, d, tr, protocol.CmdSign, "crl6",
		protocol.SignArgs{SlotID: slotID, Kind: protocol.KindCRL, Number: "6", NextUpdate: &next}); !rep.OK {
		t.Fatalf("CRL 6: %+v", rep.Error)
	}
}

func show(t *testing.T, d *Device, tr *fakeTransport, slotID, id string) protocol.SlotShow {
	t.Helper()
	rep := call(t, d, tr, protocol.CmdSlotShow, id, protocol.SlotIDArgs{SlotID: slotID})
	if !rep.OK {
		t.Fatalf("slot.show: %+v", rep.Error)
	}
	var sl protocol.SlotShow
	if err := json.Unmarshal(rep.Result, &sl); err != nil {
		t.Fatal(err)
	}
	return sl
}
