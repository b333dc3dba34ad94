package mqtt

import (
	"strings"
	"unicode/utf8"
)

// sharePrefix introduces a shared subscription, "$share/<group>/<filter>". It is an
// MQTT 5 feature that mosquitto, mochi and the large hosted brokers also honour for
// MQTT 3.1.1 clients.
const sharePrefix = "$share/"

// Join builds a topic from its levels. It does not validate them; use ValidTopicLevel
// on levels that come from configuration or from the network.
func Join(levels ...string) string {
	return strings.Join(levels, "/")
}

// SharedSubscription returns the filter through which several clients share filter's
// messages: the broker hands each message to only one subscriber of the group.
func SharedSubscription(group, filter string) string {
	return sharePrefix + group + "/" + filter
}

// ValidTopicLevel reports whether s can be used as one level of a topic that is both
// published to and subscribed to: an empty level, a separator, a wildcard or a NUL
// would change what a filter built from it matches.
func ValidTopicLevel(s string) bool {
	return s != "" && utf8.ValidString(s) && !strings.ContainsAny(s, "/+#\x00")
}

// maxTopicLen is the largest topic MQTT can encode (a 16-bit length prefix).
const maxTopicLen = 65535

// validTopicName reports whether topic may be published to.
func validTopicName(topic string) bool {
	return topic != "" && len(topic) <= maxTopicLen && utf8.ValidString(topic) &&
		!strings.ContainsAny(topic, "+#\x00")
}

// splitShared separates a shared subscription into its group and the filter the
// broker matches topics against. For an ordinary filter, group is empty.
func splitShared(filter string) (group, plain string, shared bool) {
	rest, ok := strings.CutPrefix(filter, sharePrefix)
	if !ok {
		return "", filter, false
	}
	group, plain, ok = strings.Cut(rest, "/")
	if !ok {
		return "", "", true
	}
	return group, plain, true
}

// validFilter reports whether filter is a well-formed subscription filter, including
// the shared form.
func validFilter(filter string) bool {
	if len(filter) > maxTopicLen || !utf8.ValidString(filter) || strings.ContainsRune(filter, 0) {
		return false
	}
	group, plain, shared := splitShared(filter)
	if shared && (group == "" || strings.ContainsAny(group, "+#")) {
		return false
	}
	if plain == "" {
		return false
	}
	levels := strings.Split(plain, "/")
	for i, l := range levels {
		switch {
		case l == "#":
			if i != len(levels)-1 {
				return false
			}
		case l == "+":
		case strings.ContainsAny(l, "+#"):
			return false
		}
	}
	return true
}

// matchFilter reports whether topic matches the (non-shared) filter under the MQTT
// rules, including that a wildcard in the first level does not match topics starting
// with '$' (such as $SYS), which brokers never deliver through it either.
func matchFilter(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		if !fmore || !tmore {
			// "a/#" also matches "a": the parent level itself.
			return fmore == tmore || (fmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}
