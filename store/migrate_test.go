package store

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A state file written before fingerprints left secrets out holds, in its cached
// replies and in pages freed since, an unkeyed hash over an hsm.set_pin's PIN. Opening
// it drops those fingerprints and compacts the file: the hash is nowhere in it after,
// and the slots and replies are kept.
func TestUpgradeDropsSecretDerivedDigests(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	digest := sha256.Sum256([]byte("hsm.set_pin\x00" + `{"hsm":"pkcs11-ab","pin":"123456"}`))
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	rep := Reply{Digest: digest[:], Payload: []byte(`{"id":"pin-1","ok":true}`), Stored: time.Now()}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketSlots, bucketReplies, bucketIntents} {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketSlots).Put([]byte("pkcs11-ab/01"), []byte(`{"slot_id":"pkcs11-ab/01","state":"provisioned"}`)); err != nil {
			return err
		}
		// One copy lives on; the others are only in pages the next write frees.
		for i := range 300 {
			if err := tx.Bucket(bucketReplies).Put(fmt.Appendf(nil, "old-%03d", i), rep.marshal()); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketReplies).Put([]byte("pin-1"), rep.marshal())
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for i := range 300 {
			if err := tx.Bucket(bucketReplies).Delete(fmt.Appendf(nil, "old-%03d", i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if raw, _ := os.ReadFile(path); !bytes.Contains(raw, digest[:]) {
		t.Fatal("the test's old file does not hold the digest it is about")
	}

	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Reply("pin-1")
	if err != nil || !bytes.Equal(got.Digest, LegacyDigest) || string(got.Payload) != string(rep.Payload) {
		t.Fatalf("cached reply after the upgrade: %+v, %v", got, err)
	}
	if rec, err := s.Slot("pkcs11-ab/01"); err != nil || rec.State != Provisioned {
		t.Fatalf("slot after the upgrade: %+v, %v", rec, err)
	}
	s.Close()
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, digest[:]) {
		t.Fatal("the PIN-derived digest is still in the state file")
	}
	if _, err := os.Stat(path + ".compact"); !os.IsNotExist(err) {
		t.Fatal("the compaction left its temporary file")
	}

	// Upgraded once: opening again changes nothing.
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Reply("pin-1"); err != nil {
		t.Fatal(err)
	}
}
