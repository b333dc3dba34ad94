package ota

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/iot-hsm/iot-hsm/internal/atomicfile"
)

// Version refusals. All wrap ErrRefused: nothing is replaced.
var (
	// ErrNoVersion is an update whose signed version is missing or cannot be ordered.
	ErrNoVersion = fmt.Errorf("%w: no usable signed version", ErrRefused)
	// ErrDowngrade is an update older than the running version, without a signed
	// allow_downgrade.
	ErrDowngrade = fmt.Errorf("%w: downgrade", ErrRefused)
	// ErrBelowFloor is an update older than the minimum version kept on the data
	// partition; allow_downgrade does not lift it.
	ErrBelowFloor = fmt.Errorf("%w below the minimum version", ErrDowngrade)
	// ErrVersionMismatch is a binary whose `version` output is not its signed version.
	ErrVersionMismatch = fmt.Errorf("%w: version mismatch", ErrRefused)
)

// Version is a release version as `git describe --tags` writes it:
// [v]MAJOR.MINOR.PATCH[-PRERELEASE][-N-gHASH][-dirty]. Versions are ordered by
// MAJOR.MINOR.PATCH, then the prerelease (semver: a prerelease is older than its
// release), then N, the commits after the tag. The hash and -dirty do not order.
type Version struct {
	raw                 string
	major, minor, patch int
	pre                 []string
	commits             int
}

var versionRE = regexp.MustCompile(`^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)` +
	`(?:-([0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*))?(?:-([0-9]+)-g[0-9a-f]{4,40})?$`)

// ParseVersion reads a version; anything else ("devel", a bare commit hash) is an
// error wrapping ErrNoVersion: it cannot be ordered.
func ParseVersion(s string) (Version, error) {
	m := versionRE.FindStringSubmatch(strings.TrimSuffix(s, "-dirty"))
	if m == nil {
		return Version{}, fmt.Errorf("%w: %q is not [v]MAJOR.MINOR.PATCH[-PRERELEASE][-N-gHASH]", ErrNoVersion, s)
	}
	v := Version{raw: s}
	v.major, _ = strconv.Atoi(m[1])
	v.minor, _ = strconv.Atoi(m[2])
	v.patch, _ = strconv.Atoi(m[3])
	if m[4] != "" {
		v.pre = strings.Split(m[4], ".")
	}
	if m[5] != "" {
		var err error
		if v.commits, err = strconv.Atoi(m[5]); err != nil {
			return Version{}, fmt.Errorf("%w: %q: %v", ErrNoVersion, s, err)
		}
	}
	return v, nil
}

func (v Version) String() string { return v.raw }

// Compare is -1, 0 or +1 as v is older than, as old as, or newer than w.
func (v Version) Compare(w Version) int {
	for _, c := range [][2]int{{v.major, w.major}, {v.minor, w.minor}, {v.patch, w.patch}} {
		if c[0] != c[1] {
			return cmpInt(c[0], c[1])
		}
	}
	if c := comparePre(v.pre, w.pre); c != 0 {
		return c
	}
	return cmpInt(v.commits, w.commits)
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// comparePre orders prereleases as semver does: none is newest; numeric identifiers
// are older than alphanumeric ones; a shorter list is older than a longer one.
func comparePre(a, b []string) int {
	switch {
	case len(a) == 0 && len(b) == 0:
		return 0
	case len(a) == 0:
		return 1
	case len(b) == 0:
		return -1
	}
	for i := 0; i < len(a) && i < len(b); i++ {
		na, ea := strconv.Atoi(a[i])
		nb, eb := strconv.Atoi(b[i])
		switch {
		case ea == nil && eb == nil && na != nb:
			return cmpInt(na, nb)
		case ea == nil && eb != nil:
			return -1
		case ea != nil && eb == nil:
			return 1
		case ea != nil && a[i] != b[i]:
			return strings.Compare(a[i], b[i])
		}
	}
	return cmpInt(len(a), len(b))
}

// versionOfComment reads the version from a minisign trusted comment: whitespace-
// separated key:value fields, of which exactly one is version:<version>.
func versionOfComment(comment string) (Version, error) {
	var found []string
	for _, f := range strings.Fields(comment) {
		if v, ok := strings.CutPrefix(f, "version:"); ok {
			found = append(found, v)
		}
	}
	switch len(found) {
	case 0:
		return Version{}, fmt.Errorf("%w: the signature's trusted comment %q carries no version:<version> (sign with minisign -t \"version:...\")", ErrNoVersion, comment)
	case 1:
		return ParseVersion(found[0])
	}
	return Version{}, fmt.Errorf("%w: the signature's trusted comment carries %d versions", ErrNoVersion, len(found))
}

// admit decides whether the signed version to may replace the running one. Nothing
// goes below the floor; below the running version, or over a running version that
// cannot be ordered (a development build), only with allowDowngrade, which the
// device grants to authenticated requests only.
func admit(running string, to Version, floor *Version, allowDowngrade bool) error {
	if floor != nil && to.Compare(*floor) < 0 {
		return fmt.Errorf("%w %s: %s is older (the floor rises as updates are committed)", ErrBelowFloor, floor, to)
	}
	if allowDowngrade {
		return nil
	}
	cur, err := ParseVersion(running)
	if err != nil {
		return fmt.Errorf("%w: the running version %q cannot be ordered; installing %s needs allow_downgrade in a signed request", ErrDowngrade, running, to)
	}
	if to.Compare(cur) < 0 {
		return fmt.Errorf("%w: %s is older than the running %s; installing it needs allow_downgrade in a signed request", ErrDowngrade, to, cur)
	}
	return nil
}

func (u *Updater) floorPath() string { return filepath.Join(u.dir(), "min_version") }

// floor is the minimum version kept on the data partition; nil when there is none.
// A floor file that cannot be read refuses every update rather than none.
func (u *Updater) floor() (*Version, error) {
	b, err := os.ReadFile(u.floorPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: the minimum version: %v", ErrRefused, err)
	}
	v, err := ParseVersion(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%w: the minimum version in %s: %v", ErrRefused, u.floorPath(), err)
	}
	return &v, nil
}

// raiseFloor, when an update from → to is committed, raises the floor to the older
// of the two: one step back stays possible (with allow_downgrade), a walk further
// down does not. The floor never falls.
func (u *Updater) raiseFloor(from, to string) {
	tv, err := ParseVersion(to)
	if err != nil {
		return
	}
	next := tv
	if fv, err := ParseVersion(from); err == nil && fv.Compare(tv) < 0 {
		next = fv
	}
	cur, err := u.floor()
	if err != nil {
		slog.Error("ota: minimum version not raised", "err", err)
		return
	}
	if cur != nil && cur.Compare(next) >= 0 {
		return
	}
	if err := atomicfile.Write(u.floorPath(), []byte(next.String()+"\n"), 0o600); err != nil {
		slog.Error("ota: minimum version not raised", "to", next, "err", err)
		return
	}
	slog.Info("ota: minimum version raised", "to", next)
}
