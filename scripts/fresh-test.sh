#!/bin/bash
# make test on a fresh Debian 12 root, as README promises: mmdebstrap builds a minimal
# bookworm (plus gcc, make and git, which README assumes), Go is copied in from this
# machine, and the clone of HEAD then runs `make deps` (with the network) and `make
# test` (in a network namespace of its own, so that its pcscd, vpcd and brokers do not
# meet this machine's). Needs root, mmdebstrap and about 2 GB in $FRESH (default
# /var/tmp/iot-hsm-fresh); the root is kept between runs. MAKE_TARGET runs something
# else than `make test` there (e.g. MAKE_TARGET='go test ./console').
set -euo pipefail
FRESH=${FRESH:-/var/tmp/iot-hsm-fresh}
R=$FRESH/rootfs
REPO=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
REV=$(git -C "$REPO" rev-parse "${1:-HEAD}")
GOROOT=$(go env GOROOT)

if [ ! -d "$R" ]; then
	mmdebstrap --variant=minbase --include=ca-certificates,make,gcc,libc6-dev,git,procps \
		bookworm "$R" http://deb.debian.org/debian
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
	# This machine's own CAs (a proxy's, say) are its environment, not the project's.
	if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
		cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/"
		chroot "$R" update-ca-certificates >/dev/null
	fi
fi
rm -rf "$R/usr/local/go" "$R/root/iot-hsm"
cp -a "$GOROOT" "$R/usr/local/go"
git clone -q "$REPO" "$R/root/iot-hsm"
git -C "$R/root/iot-hsm" checkout -q "$REV"
cp /etc/resolv.conf "$R/etc/resolv.conf"
for m in proc sys dev dev/pts; do mountpoint -q "$R/$m" || mount --bind "/$m" "$R/$m"; done
trap 'for m in dev/pts dev sys proc; do umount "$R/$m" 2>/dev/null || true; done' EXIT

in_root() {
	chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/local/go/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
		bash -c "cd /root/iot-hsm && $1"
}
in_root 'make deps && go mod download'
# A sysfs of the namespace's own: the uevent test writes lo's uevent and listens for it.
unshare --net --mount --fork bash -c "ip link set lo up; mount -t sysfs sysfs $R/sys; $(declare -f in_root); R=$R; in_root '${MAKE_TARGET:-make test}'"
