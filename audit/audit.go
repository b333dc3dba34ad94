// Package audit keeps the appliance's audit trail: one JSON line per provisioning
// action and per signature, each linked to the one before by a SHA-256 hash, written
// and synced to disk before the reply leaves. Removing, changing or reordering a
// record breaks the chain, and Verify names the first broken link.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Record is one audited action.
type Record struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id"`
	Requester string    `json:"requester,omitempty"` // authenticated requester, when requests are signed
	Command   string    `json:"cmd"`
	SlotID    string    `json:"slot_id,omitempty"`
	Kind      string    `json:"kind,omitempty"`    // sign kind
	Subject   string    `json:"subject,omitempty"` // of what was signed
	Serial    string    `json:"serial,omitempty"`
	Digest    string    `json:"digest,omitempty"` // SHA-256 of what was signed, hex
	Result    string    `json:"result"`           // "ok", the error code, or "interrupted"
	Note      string    `json:"note,omitempty"`   // how the record came to be, when unusual
	Prev      string    `json:"prev"`             // hash of the previous record ("" for the first)
	Hash      string    `json:"hash"`             // SHA-256 of this record with hash empty
}

// ErrBroken is a chain that does not verify.
var ErrBroken = errors.New("audit trail broken")

// sum is the record's hash: SHA-256 over its JSON with the hash field empty. JSON of
// a Go struct has a fixed field order, so the encoding is canonical.
func (r Record) sum() string {
	r.Hash = ""
	b, _ := json.Marshal(r)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// Log is an open audit trail.
type Log struct {
	mu   sync.Mutex
	f    *os.File
	head Record // the last record written
	tail []Record
}

// keep is how many recent records stay in memory for audit.tail.
const keep = 256

// Open opens (creating) the trail at path and checks its whole chain, so that a
// tampered trail is found at start-up rather than extended.
func Open(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	l := &Log{f: f}
	err = scan(f, func(r Record) {
		l.head = r
		l.tail = append(l.tail, r)
		if len(l.tail) > keep {
			l.tail = l.tail[1:]
		}
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// Append completes r (sequence number, time if unset, links) and writes it durably.
func (l *Log) Append(r Record) (Record, error) {
	out, err := l.AppendBatch([]Record{r})
	if err != nil {
		return r, err
	}
	return out[0], nil
}

// AppendBatch writes several records with one sync: the device commits the replies
// of a burst of signatures together.
func (l *Log) AppendBatch(rs []Record) ([]Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	head := l.head
	var buf []byte
	out := make([]Record, len(rs))
	for i, r := range rs {
		r.Seq = head.Seq + 1
		if r.Time.IsZero() {
			r.Time = time.Now().UTC()
		}
		r.Prev = head.Hash
		r.Hash = r.sum()
		line, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		buf = append(append(buf, line...), '\n')
		out[i], head = r, r
	}
	fi, err := l.f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if _, err := l.f.Write(buf); err != nil {
		_ = l.f.Truncate(fi.Size()) // no torn line for the next record to follow
		return nil, fmt.Errorf("audit: write: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		_ = l.f.Truncate(fi.Size())
		return nil, fmt.Errorf("audit: sync: %w", err)
	}
	l.head = head
	l.tail = append(l.tail, out...)
	if len(l.tail) > keep {
		l.tail = l.tail[len(l.tail)-keep:]
	}
	return out, nil
}

// Tail returns the last n records (at most the ones kept in memory), oldest first.
func (l *Log) Tail(n int) []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n <= 0 || n > len(l.tail) {
		n = len(l.tail)
	}
	return append([]Record(nil), l.tail[len(l.tail)-n:]...)
}

// Since calls each for every record after seq, oldest first, reading the whole file:
// start-up recovery must find a request however many records followed it, not only
// among those kept in memory.
func (l *Log) Since(seq uint64, each func(Record)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	fi, err := l.f.Stat()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return scan(io.NewSectionReader(l.f, 0, fi.Size()), func(r Record) {
		if r.Seq > seq {
			each(r)
		}
	})
}

// Head returns the last record written.
func (l *Log) Head() Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head
}

// Close closes the file.
func (l *Log) Close() error { return l.f.Close() }

// Verify checks a whole trail offline. It returns the number of records, or an error
// wrapping ErrBroken that names the first broken link.
func Verify(r io.Reader) (int, error) {
	n := 0
	err := scan(r, func(Record) { n++ })
	return n, err
}

// VerifyHead is Verify that also returns the last record, whose hash is the one to
// compare with a head hash kept elsewhere (audit.tail's): a cut-off end shows only so.
func VerifyHead(r io.Reader) (head Record, n int, err error) {
	err = scan(r, func(rec Record) { head, n = rec, n+1 })
	return head, n, err
}

// scan reads and checks every record, in order.
func scan(r io.Reader, each func(Record)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var prev Record
	line := 0
	for sc.Scan() {
		line++
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		var rec Record
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			return fmt.Errorf("%w: line %d is not a record", ErrBroken, line)
		}
		switch {
		case rec.Hash != rec.sum():
			return fmt.Errorf("%w: line %d (seq %d) was altered: its hash does not match its content", ErrBroken, line, rec.Seq)
		case rec.Prev != prev.Hash:
			return fmt.Errorf("%w: line %d (seq %d) does not follow seq %d: a record before it was removed, altered or reordered", ErrBroken, line, rec.Seq, prev.Seq)
		case rec.Seq != prev.Seq+1:
			return fmt.Errorf("%w: line %d has seq %d, want %d", ErrBroken, line, rec.Seq, prev.Seq+1)
		}
		each(rec)
		prev = rec
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("audit: read: %w", err)
	}
	return nil
}
