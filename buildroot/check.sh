#!/usr/bin/env bash
# make buildroot-check: what the BR2_EXTERNAL tree can prove without a Buildroot build
# (buildroot/README.md has the checks against a Buildroot checkout):
#   - shellcheck on the board scripts and the cross-build and image scripts;
#   - systemd-analyze verify on the image's units: dist/iot-hsm.service with the
#     overlay's drop-in, and the data partition's mount unit;
#   - the image's /etc/iot-hsm/config.toml parsed by the daemon's configuration code,
#     and the tree's consistency (go test ./cross).
# HOST_BIN: a host build of iot-hsm (make build), named by the units under test.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EXT=$ROOT/buildroot
OVERLAY=$EXT/board/iot-hsm/rootfs-overlay
HOST_BIN=${HOST_BIN:-$ROOT/bin/iot-hsm}
GO=${GO:-go}
[ -x "$HOST_BIN" ] || { echo "buildroot-check: $HOST_BIN missing (make build)" >&2; exit 1; }
HOST_BIN=$(cd "$(dirname "$HOST_BIN")" && pwd)/$(basename "$HOST_BIN")

missing=""
for p in shellcheck systemd; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "installing:$missing"
	SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
	# shellcheck disable=SC2086
	$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq &&
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing
fi
ok=0

echo "==> shellcheck"
shellcheck "$EXT"/board/iot-hsm/*.sh "$EXT"/check.sh "$ROOT"/cross/*.sh "$ROOT"/image/*.sh "$ROOT"/image/test/usr/libexec/iot-hsm-vmtest/*
ok=$((ok + 1))

echo "==> systemd-analyze verify (dist/iot-hsm.service + the image's drop-in, the data mount)"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# verify insists that ExecStart's binary exists: the copy names the host build.
sed "s|^ExecStart=/usr/bin/iot-hsm |ExecStart=$HOST_BIN |" "$ROOT/dist/iot-hsm.service" >"$T/iot-hsm.service"
cp -r "$OVERLAY/etc/systemd/system/iot-hsm.service.d" "$T/"
cp "$OVERLAY/etc/systemd/system/"*.mount "$T/"
out=$(cd "$T" && systemd-analyze verify "$T/iot-hsm.service" "$T"/*.mount 2>&1) || { echo "$out"; exit 1; }
# Warnings do not change the exit code: any line about our units fails the check.
# (User=iot-hsm and group gpio exist in the image, not necessarily here.)
if echo "$out" | grep -E 'iot-hsm|iot\\x2dhsm' | grep -v -E "Failed to resolve (user|group)|(user|group) .* not found"; then
	exit 1
fi
ok=$((ok + 1))

echo "==> the image's config.toml and the tree's consistency (go test ./cross)"
(cd "$ROOT" && "$GO" test -count=1 ./cross)
ok=$((ok + 1))

echo "buildroot-check: $ok passed, 0 failed"
