package store

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketReplies = []byte("replies")

// Reply is a cached answer to a request, kept so that a redelivered request gets the
// same answer instead of running twice. Digest fingerprints the request, so the same
// id with other content can be told apart.
type Reply struct {
	Digest  []byte
	Payload []byte
	Stored  time.Time
}

// record layout: 8 bytes unix nanos, 1 byte digest length, digest, payload. A fixed
// binary layout keeps the hot path free of JSON re-encoding of the payload.
func (r Reply) marshal() []byte {
	b := make([]byte, 9+len(r.Digest)+len(r.Payload))
	binary.BigEndian.PutUint64(b, uint64(r.Stored.UnixNano()))
	b[8] = byte(len(r.Digest))
	copy(b[9:], r.Digest)
	copy(b[9+len(r.Digest):], r.Payload)
	return b
}

func unmarshalReply(b []byte) (Reply, error) {
	if len(b) < 9 || len(b) < 9+int(b[8]) {
		return Reply{}, fmt.Errorf("store: corrupt cached reply")
	}
	n := int(b[8])
	return Reply{
		Stored:  time.Unix(0, int64(binary.BigEndian.Uint64(b))),
		Digest:  append([]byte(nil), b[9:9+n]...),
		Payload: append([]byte(nil), b[9+n:]...),
	}, nil
}

// Reply returns the cached reply for a request id, or ErrNotFound.
func (s *Store) Reply(id string) (Reply, error) {
	var r Reply
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketReplies).Get([]byte(id))
		if v == nil {
			return ErrNotFound
		}
		var err error
		r, err = unmarshalReply(v)
		return err
	})
	return r, err
}

// PutReply caches a reply under the request id.
func (s *Store) PutReply(id string, r Reply) error {
	if len(r.Digest) > 255 {
		return fmt.Errorf("store: request digest too long")
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketReplies).Put([]byte(id), r.marshal())
	})
}

// PutReplies caches several replies and drops the intents of settled requests, in
// one transaction (one sync).
func (s *Store) PutReplies(rs map[string]Reply, settled ...string) error {
	if len(rs) == 0 && len(settled) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := deleteIntents(tx, settled); err != nil {
			return err
		}
		b := tx.Bucket(bucketReplies)
		for id, r := range rs {
			if len(r.Digest) > 255 {
				return fmt.Errorf("store: request digest too long")
			}
			if err := b.Put([]byte(id), r.marshal()); err != nil {
				return err
			}
		}
		return nil
	})
}

// PruneReplies drops replies stored before cutoff and returns how many went.
func (s *Store) PruneReplies(cutoff time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketReplies).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(v) >= 8 && time.Unix(0, int64(binary.BigEndian.Uint64(v))).Before(cutoff) {
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	return n, err
}
