package store

import (
	"errors"
	"testing"
	"time"
)

// Replies cached with their audit records in flight carry a mark until a later batch
// says the records are on disk; dropping one removes the reply with its mark.
func TestUnauditedMarks(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rep := Reply{Digest: []byte{1}, Payload: []byte(`{"ok":true}`), Stored: time.Now()}
	if err := s.CacheReplies(map[string]Reply{"a": rep, "b": rep}, 7, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.CacheReplies(map[string]Reply{"c": rep}, 9, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	marks, err := s.Unaudited()
	if err != nil || len(marks) != 2 || marks["b"] != 7 || marks["c"] != 9 {
		t.Fatalf("marks %v, %v; want b at 7 and c at 9", marks, err)
	}
	if err := s.SettleUnaudited([]string{"b"}, []string{"c"}); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]error{"a": nil, "b": nil, "c": ErrNotFound} {
		if _, err := s.Reply(id); !errors.Is(err, want) {
			t.Errorf("reply %s: %v, want %v", id, err, want)
		}
	}
	if marks, _ := s.Unaudited(); len(marks) != 0 {
		t.Fatalf("marks left: %v", marks)
	}
}
