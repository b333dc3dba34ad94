package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/iot-hsm/iot-hsm/internal/atomicfile"
)

var (
	bucketMeta = []byte("meta")
	keySchema  = []byte("schema")
)

// schema is the state file's layout version. Version 2: request fingerprints leave
// secret arguments out. Before it, the fingerprint of an hsm.set_pin was an unkeyed
// hash over its PIN, which a copy of the state file gives away by brute force.
const schema = 2

// LegacyDigest is the fingerprint of a reply cached before schema 2, whose real
// fingerprint was dropped: the request's content is no longer known, only its id.
var LegacyDigest = []byte("fingerprint-dropped")

// LostDigest marks a cached "reply" that stands for a request which ran and was
// recorded in the audit trail, but whose reply was lost when the appliance stopped
// between the audit record and the reply cache.
var LostDigest = []byte("lost-in-crash")

// upgrade brings the file at path to the current schema. Digests written before
// schema 2 are dropped, then the file is compacted into a new one, so that the pages
// that held them are not left behind in the free space of the old file.
func upgrade(path string) error {
	db, err := openBolt(path)
	if err != nil {
		return err
	}
	old, fresh := uint64(0), true
	_ = db.View(func(tx *bolt.Tx) error {
		fresh = tx.Bucket(bucketReplies) == nil && tx.Bucket(bucketSlots) == nil
		if m := tx.Bucket(bucketMeta); m != nil {
			if v := m.Get(keySchema); len(v) == 8 {
				old = binary.BigEndian.Uint64(v)
			}
		}
		return nil
	})
	if old >= schema || fresh {
		err = db.Update(setSchema)
		return closeWith(db, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := dropDigests(tx); err != nil {
			return err
		}
		return setSchema(tx)
	}); err != nil {
		return closeWith(db, fmt.Errorf("store: upgrade %s: %w", path, err))
	}
	return closeWith(db, compact(db, path))
}

func setSchema(tx *bolt.Tx) error {
	m, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	v := make([]byte, 8)
	binary.BigEndian.PutUint64(v, schema)
	return m.Put(keySchema, v)
}

// dropDigests replaces every cached reply's fingerprint with LegacyDigest, except the
// markers of lost replies, which hold no request content.
func dropDigests(tx *bolt.Tx) error {
	b := tx.Bucket(bucketReplies)
	if b == nil {
		return nil
	}
	updates := map[string][]byte{}
	err := b.ForEach(func(k, v []byte) error {
		r, err := unmarshalReply(v)
		if err != nil || bytes.Equal(r.Digest, LostDigest) {
			return nil
		}
		r.Digest = LegacyDigest
		updates[string(k)] = r.marshal()
		return nil
	})
	if err != nil {
		return err
	}
	for k, v := range updates {
		if err := b.Put([]byte(k), v); err != nil {
			return err
		}
	}
	return nil
}

// compact copies the live data of src into a new file that replaces path.
func compact(src *bolt.DB, path string) error {
	tmp := path + ".compact"
	_ = os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	if err := bolt.Compact(dst, src, 1<<20); err != nil {
		dst.Close()
		os.Remove(tmp)
		return fmt.Errorf("store: compact %s: %w", path, err)
	}
	if err := dst.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}

func closeWith(db *bolt.DB, err error) error {
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}
