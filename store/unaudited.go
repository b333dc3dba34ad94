package store

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// bucketUnaudited marks cached replies whose audit records were being written at the
// same time: the device syncs both files at once, so a stop can leave a reply on disk
// whose record is not. Each mark holds the trail's last sequence number before the
// batch; start-up recovery drops a marked reply that has no later record (it never
// left), so a signature is never handed out without its audit record.
var bucketUnaudited = []byte("unaudited")

// CacheReplies caches the replies of a batch whose audit records are being synced
// meanwhile, marking each with auditSeq, and clears the marks of an earlier batch
// whose records are on disk now: one transaction, one commit.
func (s *Store) CacheReplies(rs map[string]Reply, auditSeq uint64, audited []string) error {
	if len(rs) == 0 && len(audited) == 0 {
		return nil
	}
	seq := binary.BigEndian.AppendUint64(nil, auditSeq)
	return s.db.Update(func(tx *bolt.Tx) error {
		marks, replies := tx.Bucket(bucketUnaudited), tx.Bucket(bucketReplies)
		for _, id := range audited {
			if err := marks.Delete([]byte(id)); err != nil {
				return err
			}
		}
		for id, r := range rs {
			if len(r.Digest) > 255 {
				return fmt.Errorf("store: request digest too long")
			}
			if err := replies.Put([]byte(id), r.marshal()); err != nil {
				return err
			}
			if err := marks.Put([]byte(id), seq); err != nil {
				return err
			}
		}
		return nil
	})
}

// Unaudited returns the marked replies: request id and the trail's sequence number
// before its batch.
func (s *Store) Unaudited() (map[string]uint64, error) {
	out := map[string]uint64{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUnaudited).ForEach(func(k, v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("store: corrupt mark of reply %s", k)
			}
			out[string(k)] = binary.BigEndian.Uint64(v)
			return nil
		})
	})
	return out, err
}

// SettleUnaudited clears the marks of ids and drops the cached replies of those in
// drop (replies that never left because their audit record was not written).
func (s *Store) SettleUnaudited(ids, drop []string) error {
	if len(ids) == 0 && len(drop) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		marks, replies := tx.Bucket(bucketUnaudited), tx.Bucket(bucketReplies)
		for _, id := range drop {
			if err := replies.Delete([]byte(id)); err != nil {
				return err
			}
			if err := marks.Delete([]byte(id)); err != nil {
				return err
			}
		}
		for _, id := range ids {
			if err := marks.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
}
