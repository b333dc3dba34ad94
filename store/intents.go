package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketIntents = []byte("intents")

// Intent is written before a request that changes the appliance's state (a key
// generated, a certificate imported, a slot cleared) touches the token, and removed
// once the request's audit record and reply are stored. One left behind at start-up
// is a request the appliance stopped inside: the audit trail still gets a record of
// it, and a redelivery is told what happened instead of running it again.
type Intent struct {
	Command   string    `json:"cmd"`
	SlotID    string    `json:"slot_id,omitempty"`
	Requester string    `json:"requester,omitempty"`
	Started   time.Time `json:"started"`
	// AuditSeq is the audit trail's last record when the intent was written: only a
	// later record of the same id can be this run's (an earlier refusal or offline
	// answer under the same id is a different attempt).
	AuditSeq uint64 `json:"audit_seq"`
}

// PutIntent records that request id is about to run.
func (s *Store) PutIntent(id string, in Intent) error {
	data, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketIntents).Put([]byte(id), data)
	})
}

// Intents returns every intent left, by request id.
func (s *Store) Intents() (map[string]Intent, error) {
	out := map[string]Intent{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketIntents).ForEach(func(k, v []byte) error {
			var in Intent
			if err := json.Unmarshal(v, &in); err != nil {
				return fmt.Errorf("store: intent %s: %w", k, err)
			}
			out[string(k)] = in
			return nil
		})
	})
	return out, err
}

// DeleteIntents removes the intents of requests that are settled.
func (s *Store) DeleteIntents(ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return deleteIntents(tx, ids)
	})
}

func deleteIntents(tx *bolt.Tx, ids []string) error {
	b := tx.Bucket(bucketIntents)
	for _, id := range ids {
		if err := b.Delete([]byte(id)); err != nil {
			return err
		}
	}
	return nil
}
