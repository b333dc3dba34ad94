package config

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// ErrBareDuration (with ErrInvalid): a duration key given as a bare number. TOML
// would read 10 as ten nanoseconds; guessing seconds instead would be a second
// surprise, so the number is refused and the message shows how to write it.
var ErrBareDuration = errors.New("a duration needs its unit")

// durationKeys are the keys read as time.Duration, wherever they sit.
var durationKeys = map[string]bool{
	"broker_wait": true, "stop_timeout": true, "hung_grace": true,
	"window": true, "call_timeout": true, "probe_interval": true, "session_timeout": true,
}

// blockLists are the keys that are lists of blocks, written [[key]].
var blockLists = map[string]bool{
	"pkcs11": true, "cloudkms": true, "yubikey.card": true, "leds.hsm": true, "leds.slot": true,
}

// checkShapes finds what the typed decoder would misread or explain in Go terms: a
// bare number for a duration and a single [block] where a list [[block]] is meant.
func checkShapes(data []byte) error {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		return decodeError(err)
	}
	return walkShapes("", raw)
}

func walkShapes(prefix string, m map[string]any) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		path := k
		if prefix != "" {
			path = prefix + "." + k
		}
		if err := checkValue(path, k, m[k]); err != nil {
			return err
		}
	}
	return nil
}

func checkValue(path, key string, v any) error {
	name := listName(path)
	switch v := v.(type) {
	case int64, float64:
		if durationKeys[key] {
			return fmt.Errorf("%w: %s = %v: %w: write it as a quoted string, such as \"%vs\" "+
				"(units ms, s, m, h); a bare number is refused, not read as seconds", ErrInvalid, path, v, ErrBareDuration, v)
		}
	case map[string]any:
		if blockLists[name] {
			return fmt.Errorf("%w: [%s] is a list of blocks: write [[%s]] (two brackets), one block each",
				ErrInvalid, name, name)
		}
		return walkShapes(path, v)
	case []map[string]any:
		for i, item := range v {
			if err := walkShapes(fmt.Sprintf("%s[%d]", path, i), item); err != nil {
				return err
			}
		}
	}
	return nil
}

// listName drops the [i] indexes from a path: leds.hsm[0] is in leds.hsm.
func listName(path string) string {
	var b strings.Builder
	skip := false
	for _, r := range path {
		switch {
		case r == '[':
			skip = true
		case r == ']':
			skip = false
		case !skip:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// decodeError restates a TOML error with its line and what the key accepts, instead
// of the decoder's Go types.
func decodeError(err error) error {
	line, key, msg := 0, "", err.Error()
	var pe toml.ParseError
	if errors.As(err, &pe) {
		line, key, msg = pe.Position.Line, pe.LastKey, pe.Message
	} else if m := typeErr.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		key, msg = m[2], m[3]
	}
	msg = plainTypes(msg)
	switch {
	case line > 0 && key != "":
		return fmt.Errorf("%w: line %d: %s: %s", ErrInvalid, line, key, msg)
	case line > 0:
		return fmt.Errorf("%w: line %d: %s", ErrInvalid, line, msg)
	}
	return fmt.Errorf("%w: %s", ErrInvalid, msg)
}

// typeErr is the decoder's type mismatch, which is not a toml.ParseError.
var typeErr = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

func plainTypes(msg string) string {
	switch {
	case strings.Contains(msg, "destination has type string"):
		return "want a quoted string"
	case strings.Contains(msg, "destination has type bool"):
		return "want true or false"
	case strings.Contains(msg, "destination has type int"), strings.Contains(msg, "destination has type uint"):
		return "want a whole number"
	case strings.Contains(msg, "destination has type slice"):
		return "want a list, such as [\"a\", \"b\"]"
	case strings.Contains(msg, "invalid duration"):
		_, v, _ := strings.Cut(msg, "invalid duration: ")
		return v + " is not a duration: want one with a unit, such as \"10s\", \"500ms\" or \"2m\""
	}
	return msg
}
