// Package store keeps the appliance's state (slot records, their certificates, cached
// replies) in one bbolt file under the state directory. Every change is one bbolt
// transaction: a power cut leaves the old state or the new one, never a torn file.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// ErrNotFound is returned for a record that is not in the store.
var ErrNotFound = errors.New("store: not found")

var bucketSlots = []byte("slots")

// Store is the state file. It is safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// FileName is the state file inside the state directory.
const FileName = "state.db"

// Open opens (creating if needed) the store in dir. A second process on the same
// directory gets a clear error after a second instead of waiting forever on the lock.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: state directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	if err := upgrade(path); err != nil {
		return nil, err
	}
	db, err := openBolt(path)
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketSlots, bucketReplies, bucketIntents, bucketMeta, bucketCRLNumbers, bucketUnaudited} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: initialise %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// openBolt opens the file. A second process on the same directory gets a clear error
// after a second instead of waiting forever on the lock.
func openBolt(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("store: %s is in use by another iot-hsm process", path)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return db, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// State is where a slot is in its provisioning lifecycle.
type State string

const (
	Empty       State = "empty"
	KeyReady    State = "key_ready"
	CSRPending  State = "csr_pending"
	Provisioned State = "provisioned"
)

// Slot is the record of one provisioned (or provisioning) CA slot.
type Slot struct {
	ID          string    `json:"slot_id"` // <hsm-id>/<slot>
	HSM         string    `json:"hsm"`
	Slot        string    `json:"slot"`
	State       State     `json:"state"`
	KeyType     string    `json:"key_type"`
	Label       string    `json:"label,omitempty"`
	Mode        string    `json:"mode"` // generate, import, existing
	PublicKey   string    `json:"public_key"`
	CAID        string    `json:"ca_id"`
	CSR         string    `json:"csr,omitempty"`
	Certificate string    `json:"certificate,omitempty"`
	Chain       string    `json:"chain,omitempty"`
	Attestation string    `json:"attestation,omitempty"`
	Note        string    `json:"note,omitempty"` // what the operator should know, e.g. why there is no attestation
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	// Request is the id of the request that wrote the record last: after a stop,
	// it tells whether an interrupted request's change landed (clocks cannot: a Pi
	// has no battery-backed clock).
	Request string `json:"request,omitempty"`
}

// Slot returns the record with id, or ErrNotFound.
func (s *Store) Slot(id string) (Slot, error) {
	var rec Slot
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketSlots).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("%w: slot %s", ErrNotFound, id)
		}
		return json.Unmarshal(v, &rec)
	})
	return rec, err
}

// Slots returns every record, ordered by id.
func (s *Store) Slots() ([]Slot, error) {
	var out []Slot
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSlots).ForEach(func(_, v []byte) error {
			var rec Slot
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			out = append(out, rec)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
}

// UpdateSlot reads the record with id (a zero Slot with that id when absent), lets fn
// change it and writes it back, in one transaction. When fn fails nothing is written.
func (s *Store) UpdateSlot(id string, fn func(rec *Slot, exists bool) error) (Slot, error) {
	var rec Slot
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSlots)
		v := b.Get([]byte(id))
		exists := v != nil
		rec = Slot{ID: id, State: Empty}
		if exists {
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("store: slot %s: %w", id, err)
			}
		}
		if err := fn(&rec, exists); err != nil {
			return err
		}
		rec.ID = id
		data, err := json.Marshal(&rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), data)
	})
	return rec, err
}

// DeleteSlot removes the record; deleting an absent record is not an error.
func (s *Store) DeleteSlot(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSlots).Delete([]byte(id))
	})
}
