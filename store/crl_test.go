package store

import (
	"errors"
	"math/big"
	"testing"
)

// CRL numbers per CA only grow, and survive a restart.
func TestCRLNumbersOnlyGrow(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if last, err := s.LastCRLNumber("ca1"); err != nil || last != nil {
		t.Fatalf("fresh store: %v %v", last, err)
	}
	if err := s.AdvanceCRLNumber("ca1", big.NewInt(5)); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int64{5, 4} {
		err := s.AdvanceCRLNumber("ca1", big.NewInt(n))
		var ce *CRLNumberError
		if !errors.Is(err, ErrCRLNumber) || !errors.As(err, &ce) || ce.Last.Int64() != 5 {
			t.Fatalf("number %d after 5: %v", n, err)
		}
		if err := s.CheckCRLNumber("ca1", big.NewInt(n)); !errors.Is(err, ErrCRLNumber) {
			t.Fatalf("check %d after 5: %v", n, err)
		}
	}
	// Another CA counts on its own.
	if err := s.AdvanceCRLNumber("ca2", big.NewInt(1)); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if last, err := s.LastCRLNumber("ca1"); err != nil || last.Int64() != 5 {
		t.Fatalf("after reopen: %v %v", last, err)
	}
	if err := s.AdvanceCRLNumber("ca1", new(big.Int).Lsh(big.NewInt(1), 150)); err != nil {
		t.Fatalf("a 20-octet number: %v", err)
	}
}
