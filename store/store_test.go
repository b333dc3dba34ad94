package store

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestSlotSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.UpdateSlot("pkcs11-ab/01", func(r *Slot, exists bool) error {
		if exists {
			t.Fatal("new slot reported as existing")
		}
		r.State, r.KeyType, r.CAID = KeyReady, "p256", "abc"
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err == nil {
		t.Fatal("a second Open on a store in use succeeded")
	}
	s.Close()

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rec, err := s.Slot("pkcs11-ab/01")
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != KeyReady || rec.KeyType != "p256" || rec.CAID != "abc" || rec.ID != "pkcs11-ab/01" {
		t.Fatalf("record after reopen: %+v", rec)
	}
}

func TestFailedUpdateWritesNothing(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.UpdateSlot("x/01", func(r *Slot, _ bool) error { r.State = Provisioned; r.Certificate = "old"; return nil })
	boom := errors.New("boom")
	_, err = s.UpdateSlot("x/01", func(r *Slot, _ bool) error { r.Certificate = "new"; return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	rec, _ := s.Slot("x/01")
	if rec.Certificate != "old" {
		t.Fatalf("failed update changed the record: %+v", rec)
	}
	if _, err := s.Slot("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing slot: %v", err)
	}
	if err := s.DeleteSlot("x/01"); err != nil {
		t.Fatal(err)
	}
	if all, _ := s.Slots(); len(all) != 0 {
		t.Fatalf("after delete: %+v", all)
	}
}

func TestRepliesCachedAndPruned(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	old := Reply{Digest: []byte{1, 2}, Payload: []byte(`{"ok":true}`), Stored: time.Now().Add(-25 * time.Hour)}
	fresh := Reply{Digest: []byte{3}, Payload: []byte(`{"ok":false}`), Stored: time.Now()}
	s.PutReply("old", old)
	s.PutReply("fresh", fresh)
	got, err := s.Reply("fresh")
	if err != nil || !bytes.Equal(got.Payload, fresh.Payload) || !bytes.Equal(got.Digest, fresh.Digest) {
		t.Fatalf("Reply: %+v %v", got, err)
	}
	n, err := s.PruneReplies(time.Now().Add(-24 * time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	if _, err := s.Reply("old"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old reply still there: %v", err)
	}
}
