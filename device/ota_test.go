package device

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/audit"
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
