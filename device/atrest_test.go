package device

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iot-hsm/iot-hsm/audit"
	"github.com/iot-hsm/iot-hsm/protocol"
)

// Nothing derived from a PIN, a key password or an imported key reaches the state
// directory without persist: not the secret, not a hash of it, not the hash over the
// request that carried it. A thief with a copy of the data partition and of the
// token's files would otherwise brute-force a 6-digit PIN in under a second.
func TestSecretsLeaveNothingInTheStateDirectory(t *testing.T) {
	r := newCore(t)
	al, err := audit.Open(filepath.Join(r.stateDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	d := New(Options{DeviceID: "atrest", Audit: al}, r.slots)
	tr := &fakeTransport{}
	if err := d.Start(t.Context(), tr); err != nil {
		t.Fatal(err)
	}

	keyDir := t.TempDir()
	keyFile := filepath.Join(keyDir, "ca.pem")
	const password = "k3y-pa55word"
	runOpenSSL(t, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes-256-cbc", "-pass", "pass:"+password, "-out", keyFile)
	keyPEM, _ := os.ReadFile(keyFile)

	requests := []struct{ cmd, id, args string }{
		{protocol.CmdHSMSetPIN, "pin-ok", setPINArgs(r.hsmID, r.tok.PIN(), false, "")},
		{protocol.CmdHSMSetPIN, "pin-wrong", setPINArgs(r.hsmID, "918273", false, "")},
		{protocol.CmdSlotProvision, "import", fmt.Sprintf(`{"hsm":%q,"slot":"41","mode":"import","key_pem":%q,"key_password":%q}`,
			r.hsmID, keyPEM, password)},
	}
	for _, q := range requests {
		request(d, q.cmd, q.id, q.args)
		tr.reply(t, d, q.id)
	}
	if rep := tr.reply(t, d, "import"); !rep.OK {
		t.Fatalf("import: %+v", rep.Error)
	}
	d.Stop()

	// What a thief would try: the secrets, their hashes, and the hash of each
	// request's content as the reply cache used to keep it.
	var needles [][]byte
	add := func(b []byte) {
		sum := sha256.Sum256(b)
		needles = append(needles, b, sum[:], []byte(hex.EncodeToString(sum[:])), []byte(base64.StdEncoding.EncodeToString(sum[:])))
	}
	for _, s := range []string{r.tok.PIN(), "918273", password} {
		add([]byte(s))
	}
	for _, q := range requests {
		var compact bytes.Buffer
		_ = json.Compact(&compact, []byte(q.args))
		add(append([]byte(q.cmd+"\x00"), compact.Bytes()...))
	}
	add(keyPEM)
	err = filepath.WalkDir(r.stateDir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, n := range needles {
			if bytes.Contains(raw, n) {
				t.Errorf("%s holds secret-derived value %d", path, i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// runOpenSSL runs the real openssl to make key files the way operators do.
func runOpenSSL(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
