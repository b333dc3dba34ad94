package device

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/iot-hsm/iot-hsm/protocol"
)

// fakePINStore records what the device asks of the secrets store.
type fakePINStore struct {
	mu      sync.Mutex
	saved   map[string]string
	deleted []string
	fail    error
}

func (f *fakePINStore) Save(hsmID, pin string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if f.saved == nil {
		f.saved = map[string]string{}
	}
	f.saved[hsmID] = pin
	return nil
}

func (f *fakePINStore) Delete(hsmID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, hsmID)
	delete(f.saved, hsmID)
	return nil
}

func (f *fakePINStore) snapshot() (map[string]string, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[string]string{}
	for k, v := range f.saved {
		m[k] = v
	}
	return m, append([]string(nil), f.deleted...)
}

func setPINArgs(hsmID, pin string, persist bool, extra string) string {
	return fmt.Sprintf(`{"hsm":%q,"pin":%q,"persist":%v%s}`, hsmID, pin, persist, extra)
}

func TestSetPINPersist(t *testing.T) {
	ps := &fakePINStore{}
	d, tr, r := startDevice(t, Options{Secrets: ps})
	pin := r.tok.PIN()

	// A management key or SO PIN is never stored: refused before the token sees anything.
	for i, extra := range []string{`,"management_key":"010203040506070801020304050607080102030405060708"`, `,"so_pin":"5678"`} {
		id := fmt.Sprintf("mk-%d", i)
		request(d, protocol.CmdHSMSetPIN, id, setPINArgs(r.hsmID, pin, true, extra))
		rep := tr.reply(t, d, id)
		if rep.OK || rep.Error.Code != protocol.CodeBadRequest || !strings.Contains(rep.Error.Message, "never stored") {
			t.Fatalf("persist with %s: %+v", extra, rep.Error)
		}
	}
	if saved, _ := ps.snapshot(); len(saved) != 0 {
		t.Fatal("something was stored with a management key")
	}

	// A wrong PIN is not stored.
	request(d, protocol.CmdHSMSetPIN, "wrong", setPINArgs(r.hsmID, "0000", true, ""))
	if rep := tr.reply(t, d, "wrong"); rep.OK || rep.Error.Code != protocol.CodePINIncorrect {
		t.Fatalf("wrong PIN: %+v", rep)
	}
	if saved, _ := ps.snapshot(); len(saved) != 0 {
		t.Fatal("a rejected PIN was stored")
	}

	// The right one with persist is checked by the token, then stored.
	request(d, protocol.CmdHSMSetPIN, "good", setPINArgs(r.hsmID, pin, true, ""))
	rep := tr.reply(t, d, "good")
	if !rep.OK {
		t.Fatalf("persist: %+v", rep.Error)
	}
	if saved, _ := ps.snapshot(); saved[r.hsmID] != pin || len(saved) != 1 {
		t.Fatalf("stored %v", saved)
	}

	// Without persist, the stored PIN is forgotten.
	request(d, protocol.CmdHSMSetPIN, "plain", setPINArgs(r.hsmID, pin, false, ""))
	if rep := tr.reply(t, d, "plain"); !rep.OK {
		t.Fatalf("without persist: %+v", rep.Error)
	}
	if saved, deleted := ps.snapshot(); len(saved) != 0 || len(deleted) != 1 || deleted[0] != r.hsmID {
		t.Fatalf("after set_pin without persist: saved %d, deleted %v", len(saved), deleted)
	}

	// A store that fails: an error reply that says the PIN is in use but not stored.
	ps.mu.Lock()
	ps.fail = errors.New("secrets: the key file does not open the sealed file")
	ps.mu.Unlock()
	request(d, protocol.CmdHSMSetPIN, "fails", setPINArgs(r.hsmID, pin, true, ""))
	rep = tr.reply(t, d, "fails")
	if rep.OK || rep.Error.Code != protocol.CodeInternal || !strings.Contains(rep.Error.Message, "not stored") {
		t.Fatalf("failing store: %+v", rep.Error)
	}

	// The PIN is in no reply.
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for topic, msgs := range tr.out {
		for _, m := range msgs {
			if strings.Contains(string(m), `"`+pin+`"`) {
				t.Fatalf("the PIN is in a message on %s: %s", topic, m)
			}
		}
	}
}

func TestSetPINPersistWithoutStore(t *testing.T) {
	d, tr, r := startDevice(t, Options{})
	request(d, protocol.CmdHSMSetPIN, "p", setPINArgs(r.hsmID, r.tok.PIN(), true, ""))
	if rep := tr.reply(t, d, "p"); rep.OK || rep.Error.Code != protocol.CodeUnsupported {
		t.Fatalf("persist without a store: %+v", rep)
	}
	request(d, protocol.CmdHSMSetPIN, "q", setPINArgs(r.hsmID, r.tok.PIN(), false, ""))
	if rep := tr.reply(t, d, "q"); !rep.OK {
		t.Fatalf("without persist and without a store: %+v", rep.Error)
	}
}

// A wrong PIN sent to hsm.set_pin (by anyone who may publish commands) leaves the
// PIN the token works with in use: the CAs on that token stay online.
func TestWrongPINKeepsTheWorkingLogin(t *testing.T) {
	d, tr, r := startDevice(t, Options{})
	request(d, protocol.CmdHSMSetPIN, "wrong", setPINArgs(r.hsmID, "000000", false, ""))
	if rep := tr.reply(t, d, "wrong"); rep.OK || rep.Error.Code != protocol.CodePINIncorrect {
		t.Fatalf("wrong PIN: %+v", rep)
	}
	st := d.Status()
	if len(st.HSMs) != 1 || !st.HSMs[0].PIN.Set {
		t.Fatalf("status after a refused PIN: %+v", st.HSMs)
	}
	request(d, protocol.CmdSlotProvision, "gen", `{"hsm":"`+r.hsmID+`","slot":"51","mode":"generate","key_type":"p256"}`)
	if rep := tr.reply(t, d, "gen"); !rep.OK {
		t.Fatalf("the token after a refused PIN: %+v", rep.Error)
	}
}
