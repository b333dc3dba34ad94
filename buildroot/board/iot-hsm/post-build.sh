#!/bin/sh
# post-build (after Buildroot's board/raspberrypi/post-build.sh): the systemd unit from
# the repository's dist/, and checks that the image has what the appliance needs.
# Called with TARGET_DIR as $1; BR2_EXTERNAL_IOT_HSM_PATH and BR2_CONFIG come from
# Buildroot's environment.
set -eu

TARGET_DIR=$1
EXT=${BR2_EXTERNAL_IOT_HSM_PATH:-$(cd "$(dirname "$0")/../.." && pwd)}
REPO=$(cd "$EXT/.." && pwd)

fail() {
	echo "iot-hsm post-build: $*" >&2
	exit 1
}

# The unit is the repository's own (dist/iot-hsm.service), not a copy kept here; the
# overlay's iot-hsm.service.d/10-appliance.conf adds the image's user, the data
# partition and pcscd. preset-all (50-iot-hsm.preset) enables it.
UNIT=$REPO/dist/iot-hsm.service
[ -f "$UNIT" ] || fail "$UNIT is missing"
install -D -m 0644 "$UNIT" "$TARGET_DIR/usr/lib/systemd/system/iot-hsm.service"

# The data partition's mount point (the partition itself is made by post-image.sh).
mkdir -p "$TARGET_DIR/var/lib/iot-hsm"

# What the appliance needs at run time.
[ -x "$TARGET_DIR/usr/bin/iot-hsm" ] || fail "no /usr/bin/iot-hsm (BR2_PACKAGE_IOT_HSM)"
[ -f "$TARGET_DIR/etc/iot-hsm/config.toml" ] || fail "no /etc/iot-hsm/config.toml (overlay)"
if [ -f "${BR2_CONFIG:-/dev/null}" ] && grep -q '^BR2_PACKAGE_CCID=y' "$BR2_CONFIG"; then
	ls "$TARGET_DIR"/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist >/dev/null 2>&1 ||
		fail "ccid is selected but its driver is not under /usr/lib/pcsc/drivers"
fi
# The shipped config.toml trusts these two, the same on every appliance of a PKI; the
# daemon refuses to start without them (buildroot/README.md, "Before the first boot").
for f in broker-ca.pem controllers.pem; do
	[ -s "$TARGET_DIR/etc/iot-hsm/$f" ] ||
		echo "iot-hsm post-build: WARNING: no /etc/iot-hsm/$f: add it in an overlay of yours, or the service will not start" >&2
done
grep -q '^iot-hsm:' "$TARGET_DIR/etc/passwd" || fail "no iot-hsm user in /etc/passwd"
grep -q '^gpio:' "$TARGET_DIR/etc/group" || fail "no gpio group in /etc/group"

# Record what the image was built from.
version=$(git -C "$REPO" describe --tags --always --dirty 2>/dev/null || echo unknown)
echo "$version" >"$TARGET_DIR/etc/iot-hsm-release"
