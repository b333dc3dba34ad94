package mqtt

import "testing"

func TestMatchFilter(t *testing.T) {
	cases := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"+/+", "/x", true},
		{"a/+/c", "a/b/c", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"+", "a", true},
		{"#", "$SYS/broker", false},
		{"+/broker", "$SYS/broker", false},
		{"$SYS/#", "$SYS/broker", true},
		{"iot-hsm/ca/+/sign", "iot-hsm/ca/abc/sign", true},
	}
	for _, c := range cases {
		if got := matchFilter(c.filter, c.topic); got != c.want {
			t.Errorf("matchFilter(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

func TestValidFilter(t *testing.T) {
	good := []string{"a", "a/b", "a/+/c", "a/#", "#", "+", "/", "$share/g/a/b", "$share/g/#", "$SYS/#"}
	bad := []string{"", "a/#/b", "a#", "a/b+", "a\x00", "$share/g", "$share//a", "$share/g+/a", "$share/g/", "a/\xff"}
	for _, f := range good {
		if !validFilter(f) {
			t.Errorf("validFilter(%q) = false", f)
		}
	}
	for _, f := range bad {
		if validFilter(f) {
			t.Errorf("validFilter(%q) = true", f)
		}
	}
}

func TestValidTopicName(t *testing.T) {
	for _, s := range []string{"a", "a/b", "/", "$x/y"} {
		if !validTopicName(s) {
			t.Errorf("validTopicName(%q) = false", s)
		}
	}
	for _, s := range []string{"", "a/+", "a/#", "a\x00"} {
		if validTopicName(s) {
			t.Errorf("validTopicName(%q) = true", s)
		}
	}
}

func TestValidTopicLevel(t *testing.T) {
	for _, s := range []string{"dev-1", "9a", "ihsm_1a2b", "$x"} {
		if !ValidTopicLevel(s) {
			t.Errorf("ValidTopicLevel(%q) = false", s)
		}
	}
	for _, s := range []string{"", "a/b", "+", "#", "a+", "a\x00", "\xff"} {
		if ValidTopicLevel(s) {
			t.Errorf("ValidTopicLevel(%q) = true", s)
		}
	}
}

func TestJoinAndShared(t *testing.T) {
	if got := Join("iot-hsm", "dev", "cmd", "status"); got != "iot-hsm/dev/cmd/status" {
		t.Errorf("Join = %q", got)
	}
	f := SharedSubscription("iot-hsm", Join("iot-hsm", "ca", "+", "sign"))
	if f != "$share/iot-hsm/iot-hsm/ca/+/sign" {
		t.Errorf("SharedSubscription = %q", f)
	}
	group, plain, shared := splitShared(f)
	if group != "iot-hsm" || plain != "iot-hsm/ca/+/sign" || !shared {
		t.Errorf("splitShared(%q) = %q, %q, %v", f, group, plain, shared)
	}
	if _, plain, shared := splitShared("a/b"); plain != "a/b" || shared {
		t.Errorf("splitShared(a/b) = %q, %v", plain, shared)
	}
}
