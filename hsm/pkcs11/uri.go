package pkcs11

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/iot-hsm/iot-hsm/hsm"
)

// URI is the part of an RFC 7512 PKCS#11 URI the appliance uses to pick a token (and
// optionally a key) in its configuration, e.g.
//
//	pkcs11:token=ca;serial=3f2a...;id=%01?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/iot-hsm/pin
type URI struct {
	Token        string // token label
	Serial       string
	Manufacturer string
	Model        string
	ID           []byte // CKA_ID of a key
	Object       string // CKA_LABEL of a key
	ModulePath   string
	PINSource    string
	PINValue     string
}

// ParseURI parses an RFC 7512 URI. Unknown path attributes are an error (the RFC
// lets them be ignored, but a typo in a CA key's address should not silently select
// another token); vendor query attributes are ignored.
func ParseURI(s string) (*URI, error) {
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return nil, fmt.Errorf("%w: %q is not a pkcs11: URI", hsm.ErrInvalidConfig, s)
	}
	path, query, _ := strings.Cut(rest, "?")
	u := &URI{}
	for _, attr := range splitNonEmpty(path, ";") {
		k, v, ok := strings.Cut(attr, "=")
		if !ok {
			return nil, fmt.Errorf("%w: pkcs11 URI attribute %q has no value", hsm.ErrInvalidConfig, attr)
		}
		val, err := url.PathUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("%w: pkcs11 URI attribute %s: %v", hsm.ErrInvalidConfig, k, err)
		}
		switch k {
		case "token":
			u.Token = val
		case "serial":
			u.Serial = val
		case "manufacturer":
			u.Manufacturer = val
		case "model":
			u.Model = val
		case "id":
			u.ID = []byte(val)
		case "object":
			u.Object = val
		case "type", "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer", "slot-id":
			// Accepted and not needed to find a token.
		default:
			return nil, fmt.Errorf("%w: unknown pkcs11 URI attribute %q", hsm.ErrInvalidConfig, k)
		}
	}
	for _, attr := range splitNonEmpty(query, "&") {
		k, v, _ := strings.Cut(attr, "=")
		val, err := url.QueryUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("%w: pkcs11 URI query %s: %v", hsm.ErrInvalidConfig, k, err)
		}
		switch k {
		case "module-path":
			u.ModulePath = val
		case "pin-source":
			u.PINSource = val
		case "pin-value":
			u.PINValue = val
		}
	}
	return u, nil
}

// Matches reports whether a token with these properties is the one the URI names.
func (u *URI) Matches(label, serial, manufacturer, model string) bool {
	return (u.Token == "" || u.Token == label) &&
		(u.Serial == "" || u.Serial == serial) &&
		(u.Manufacturer == "" || u.Manufacturer == manufacturer) &&
		(u.Model == "" || u.Model == model)
}

// String prints the URI without its PIN, so it can be logged.
func (u *URI) String() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+escape(v))
		}
	}
	add("token", u.Token)
	add("serial", u.Serial)
	add("manufacturer", u.Manufacturer)
	add("model", u.Model)
	if len(u.ID) > 0 {
		var b strings.Builder
		for _, c := range u.ID {
			fmt.Fprintf(&b, "%%%02x", c)
		}
		parts = append(parts, "id="+b.String())
	}
	add("object", u.Object)
	s := "pkcs11:" + strings.Join(parts, ";")
	if u.ModulePath != "" {
		s += "?module-path=" + url.QueryEscape(u.ModulePath)
	}
	return s
}

func escape(v string) string { return strings.ReplaceAll(url.PathEscape(v), ";", "%3B") }

func splitNonEmpty(s, sep string) []string {
	var out []string
	for _, p := range strings.Split(s, sep) {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}
