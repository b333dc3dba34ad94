package store

import (
	"errors"
	"fmt"
	"math/big"

	bolt "go.etcd.io/bbolt"
)

// bucketCRLNumbers holds, per CA (ca_id), the last CRL number the appliance signed,
// as a decimal string: CRL numbers must grow (RFC 5280 5.2.3), and a CRL with a number
// already used would replace a newer list in a relying party's cache.
var bucketCRLNumbers = []byte("crl_numbers")

// ErrCRLNumber is a CRL number that is not greater than the last one signed for
// that CA; the error is a *CRLNumberError, which says the last number.
var ErrCRLNumber = errors.New("CRL number is not greater than the last one signed")

// CRLNumberError carries the last number signed for the CA.
type CRLNumberError struct {
	CAID string
	Last *big.Int
}

func (e *CRLNumberError) Error() string {
	return fmt.Sprintf("%v for CA %s (last: %s)", ErrCRLNumber, e.CAID, e.Last)
}

func (e *CRLNumberError) Is(target error) bool { return target == ErrCRLNumber }

// LastCRLNumber returns the last CRL number signed for the CA, or nil when none was.
func (s *Store) LastCRLNumber(caID string) (*big.Int, error) {
	var last *big.Int
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		last, err = lastCRLNumber(tx, caID)
		return err
	})
	return last, err
}

// CheckCRLNumber answers a *CRLNumberError when n is not greater than the last
// number signed for the CA.
func (s *Store) CheckCRLNumber(caID string, n *big.Int) error {
	last, err := s.LastCRLNumber(caID)
	if err != nil {
		return err
	}
	if last != nil && n.Cmp(last) <= 0 {
		return &CRLNumberError{CAID: caID, Last: last}
	}
	return nil
}

// AdvanceCRLNumber records n as the CA's last CRL number, in one transaction with
// the check that it is greater than the last one.
func (s *Store) AdvanceCRLNumber(caID string, n *big.Int) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		last, err := lastCRLNumber(tx, caID)
		if err != nil {
			return err
		}
		if last != nil && n.Cmp(last) <= 0 {
			return &CRLNumberError{CAID: caID, Last: last}
		}
		return tx.Bucket(bucketCRLNumbers).Put([]byte(caID), []byte(n.String()))
	})
}

func lastCRLNumber(tx *bolt.Tx, caID string) (*big.Int, error) {
	v := tx.Bucket(bucketCRLNumbers).Get([]byte(caID))
	if v == nil {
		return nil, nil
	}
	n, ok := new(big.Int).SetString(string(v), 10)
	if !ok {
		return nil, fmt.Errorf("store: CRL number of CA %s is unreadable", caID)
	}
	return n, nil
}
