package vyubikey

import "errors"

// BER-TLV as the PIV card application uses it (NIST SP 800-73-4 part 2, appendix
// "BER-TLV"): tags of one to three bytes, lengths in short form or in long form
// with one to three length bytes. Everything the card emits uses the shortest
// length form, so DER parsers (piv-go's encoding/asn1) accept it.

var errTLV = errors.New("malformed BER-TLV")

// tlvItem is one parsed element: tag as its big-endian tag bytes folded into an
// integer (0x5C, 0x7F49, 0x5FC105 ...), value a sub-slice of the input.
type tlvItem struct {
	tag   uint32
	value []byte
}

// appendLen appends a BER length in its shortest form.
func appendLen(b []byte, n int) []byte {
	switch {
	case n < 0x80:
		return append(b, byte(n))
	case n < 0x100:
		return append(b, 0x81, byte(n))
	case n < 0x10000:
		return append(b, 0x82, byte(n>>8), byte(n))
	default:
		return append(b, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
}

// appendTag appends a tag given as an integer of one to three bytes.
func appendTag(b []byte, tag uint32) []byte {
	switch {
	case tag > 0xFFFF:
		return append(b, byte(tag>>16), byte(tag>>8), byte(tag))
	case tag > 0xFF:
		return append(b, byte(tag>>8), byte(tag))
	default:
		return append(b, byte(tag))
	}
}

// tlv encodes one element; values are concatenated.
func tlv(tag uint32, values ...[]byte) []byte {
	n := 0
	for _, v := range values {
		n += len(v)
	}
	out := appendTag(make([]byte, 0, n+8), tag)
	out = appendLen(out, n)
	for _, v := range values {
		out = append(out, v...)
	}
	return out
}

// readTLV reads one element from the front of b.
func readTLV(b []byte) (item tlvItem, rest []byte, err error) {
	if len(b) < 2 {
		return item, nil, errTLV
	}
	i := 0
	tag := uint32(b[i])
	i++
	if tag&0x1F == 0x1F { // multi-byte tag
		for {
			if i >= len(b) || i >= 3 {
				return item, nil, errTLV
			}
			tag = tag<<8 | uint32(b[i])
			i++
			if b[i-1]&0x80 == 0 {
				break
			}
		}
	}
	if i >= len(b) {
		return item, nil, errTLV
	}
	l := int(b[i])
	i++
	if l&0x80 != 0 {
		nb := l & 0x7F
		if nb == 0 || nb > 3 || i+nb > len(b) {
			return item, nil, errTLV
		}
		l = 0
		for k := 0; k < nb; k++ {
			l = l<<8 | int(b[i])
			i++
		}
	}
	if i+l > len(b) {
		return item, nil, errTLV
	}
	return tlvItem{tag: tag, value: b[i : i+l]}, b[i+l:], nil
}

// parseTLVs parses a sequence of elements that must fill b exactly.
func parseTLVs(b []byte) ([]tlvItem, error) {
	var items []tlvItem
	for len(b) > 0 {
		it, rest, err := readTLV(b)
		if err != nil {
			return nil, err
		}
		items = append(items, it)
		b = rest
	}
	return items, nil
}

// findTLV returns the value of the first element with the tag.
func findTLV(items []tlvItem, tag uint32) ([]byte, bool) {
	for _, it := range items {
		if it.tag == tag {
			return it.value, true
		}
	}
	return nil, false
}
