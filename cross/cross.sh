#!/usr/bin/env bash
# make cross: static linux/arm64 and linux/arm (GOARM=7) binaries of iot-hsm, with cgo
# (piv-go needs the pcsc-lite client, miekg/pkcs11 needs dlopen), from Debian's packages
# only:
#   - the cross compilers: gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf (and their
#     static glibc, libc6-dev-arm64-cross / libc6-dev-armhf-cross);
#   - the pcsc-lite client library: Debian ships no libpcsclite.a, so Debian's source
#     package (apt-get source pcsc-lite) is built once per architecture into a static
#     library in a private sysroot under $CROSS_DIR.
# Debian's apt sources are read through a private apt configuration under $CROSS_DIR
# (deb-src entries, arm64 indexes): the machine's own apt setup is left untouched.
#
#   cross/cross.sh            build both binaries (bin/iot-hsm-linux-arm64, -armv7)
#   cross/cross.sh deps       only install the host packages that are missing
#   cross/cross.sh sysroot    only prepare the static pcsc-lite per architecture
#   cross/cross.sh apt ARGS   run apt-get with the private configuration (cross-test)
#   cross/cross.sh env NAME   print the static cgo build environment of arm64 or armv7
#   cross/cross.sh glibc NAME the glibc version linked into that binary
#
# Environment: CROSS_DIR (default cross/build), BIN_DIR (default bin), VERSION, GO,
# CROSS_ARCHES (default "arm64 armv7").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CROSS_DIR=${CROSS_DIR:-$ROOT/cross/build}
BIN_DIR=${BIN_DIR:-$ROOT/bin}
GO=${GO:-go}
VERSION=${VERSION:-$(git -C "$ROOT" describe --tags --always --dirty 2>/dev/null || echo devel)}
CROSS_ARCHES=${CROSS_ARCHES:-arm64 armv7}
# arm64 must stay under this: the appliance image's budget for the binary.
ARM64_LIMIT_MIB=25

# The flags of a static cgo binary: external linking with -static (glibc, libpcsclite,
# libdl from Debian's cross libc6-dev), and Go's own DNS and user lookups instead of
# glibc's NSS, which a static binary cannot load.
CROSS_TAGS=netgo,osusergo
CROSS_LDFLAGS_LINK="-linkmode external -extldflags -static"

HOST_PACKAGES=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
	flex make pkg-config dpkg-dev file)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'cross: %s\n' "$*" >&2; exit 1; }

# arch_vars NAME: GOARCH, GOARM, TRIPLET, QEMU, OUT for one target.
arch_vars() {
	case $1 in
	arm64) GOARCH=arm64 GOARM="" TRIPLET=aarch64-linux-gnu QEMU=qemu-aarch64-static DEBARCH=arm64 ;;
	armv7) GOARCH=arm GOARM=7 TRIPLET=arm-linux-gnueabihf QEMU=qemu-arm-static DEBARCH=armhf ;;
	*) die "unknown architecture $1 (arm64 or armv7)" ;;
	esac
	OUT=$BIN_DIR/iot-hsm-linux-$1
	SYSROOT=$CROSS_DIR/$1/sysroot
}

# install_missing PKG...: apt-get install only what dpkg does not have (as make deps).
install_missing() {
	local missing="" p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
	done
	[ -z "$missing" ] && return 0
	log "installing:$missing"
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	# shellcheck disable=SC2086
	$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq &&
		DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing
}

# A private apt configuration: the machine's Debian sources plus deb-src, and the
# arm64 package indexes, in $CROSS_DIR/apt. Nothing under /etc/apt changes.
APT_DIR=$CROSS_DIR/apt
apt_setup() {
	[ -f "$APT_DIR/.updated" ] && return 0
	log "private apt configuration in $APT_DIR (Debian sources + deb-src + arm64 indexes)"
	rm -rf "$APT_DIR"
	mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/sources.list.d"
	local f n=0
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		grep -qi '^URIs:.*debian' "$f" || continue
		sed -E 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb deb-src/' "$f" >"$APT_DIR/sources.list.d/$(basename "$f")"
		n=$((n + 1))
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		grep -E '^deb[[:space:]].*debian' "$f" | sed -E 's/^deb[[:space:]]/deb-src /' |
			cat <(grep -E '^deb[[:space:]].*debian' "$f") - >"$APT_DIR/sources.list.d/$(basename "$f").list" || true
		n=$((n + 1))
	done
	[ "$n" -gt 0 ] || die "no Debian apt sources found under /etc/apt"
	cat >"$APT_DIR/apt.conf" <<EOF
Dir::State::Lists "$APT_DIR/lists";
Dir::Cache "$APT_DIR/cache";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$APT_DIR/sources.list.d";
APT::Architectures { "$(dpkg --print-architecture)"; "arm64"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
EOF
	# An index that fails to download (a mirror in mid-sync) is reported and the rest
	# is used; what we need is checked by the steps that use it.
	APT_CONFIG=$APT_DIR/apt.conf apt-get update -qq || log "apt-get update reported errors (see above); going on with the indexes it got"
	touch "$APT_DIR/.updated"
}
apt_private() { apt_setup && APT_CONFIG=$APT_DIR/apt.conf apt-get "$@"; }

# pcsc_source: Debian's pcsc-lite source package, unpacked once (patches applied).
pcsc_source() {
	local src=$CROSS_DIR/src
	if [ -z "$(find "$src" -maxdepth 1 -type d -name 'pcsc-lite-*' 2>/dev/null)" ]; then
		apt_setup
		log "apt-get source pcsc-lite (Debian's source package)"
		rm -rf "$src" && mkdir -p "$src"
		(cd "$src" && APT_CONFIG=$APT_DIR/apt.conf apt-get source -qq pcsc-lite)
	fi
	PCSC_SRC=$(find "$src" -maxdepth 1 -type d -name 'pcsc-lite-*' | sort | tail -1)
	[ -n "$PCSC_SRC" ] || die "apt-get source pcsc-lite gave no source tree"
}

# pcsc_static NAME: libpcsclite.a, headers and libpcsclite.pc in that arch's sysroot.
pcsc_static() {
	arch_vars "$1"
	[ -f "$SYSROOT/usr/lib/libpcsclite.a" ] && return 0
	pcsc_source
	local b=$CROSS_DIR/$1/pcsc-build
	log "pcsc-lite $(basename "$PCSC_SRC") -> static libpcsclite.a for $TRIPLET"
	rm -rf "$b" "$SYSROOT" && mkdir -p "$CROSS_DIR/$1" && cp -a "$PCSC_SRC" "$b"
	# The client only: no pcscd features. ipcdir as Debian's (and Buildroot's) pcscd.
	(cd "$b" &&
		./configure -q --host="$TRIPLET" --prefix=/usr --enable-static --disable-shared \
			--disable-libudev --disable-libsystemd --disable-polkit --disable-libusb \
			--enable-ipcdir=/run/pcscd >"$b.configure.log" 2>&1 &&
		make -s -j"$(nproc)" -C src libpcsclite.la libpcsclite.pc PCSC/pcsclite.h >"$b.make.log" 2>&1 &&
		make -s -C src install-libLTLIBRARIES install-nobase_includeHEADERS install-nodistheaderDATA \
			install-pcDATA DESTDIR="$SYSROOT" >>"$b.make.log" 2>&1) ||
		{ tail -30 "$b.configure.log" "$b.make.log" >&2; die "pcsc-lite build failed for $TRIPLET"; }
	for f in lib/libpcsclite.a lib/pkgconfig/libpcsclite.pc include/PCSC/winscard.h include/PCSC/pcsclite.h; do
		[ -f "$SYSROOT/usr/$f" ] || die "pcsc-lite install incomplete: no $SYSROOT/usr/$f"
	done
	rm -f "$SYSROOT/usr/lib/libpcsclite.la"
}

# glibc_version TRIPLET: the glibc a static binary for that target carries.
glibc_version() {
	local v
	v=$(printf '#include <gnu/libc-version.h>\n__GLIBC__.__GLIBC_MINOR__\n' | "$1-gcc" -E -P -include features.h - 2>/dev/null | tail -1 | tr -d ' ')
	echo "${v:-unknown}"
}

# cross_env NAME: the environment of a static cgo build for that target (also used by
# cross-test for `go test -exec`).
cross_env() {
	arch_vars "$1"
	export CGO_ENABLED=1 GOOS=linux GOARCH GOARM CC=$TRIPLET-gcc
	export PKG_CONFIG_LIBDIR=$SYSROOT/usr/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$SYSROOT PKG_CONFIG_PATH=
	[ -n "$GOARM" ] || unset GOARM
}

build_one() {
	pcsc_static "$1"
	(
		cross_env "$1"
		log "go build $GOOS/$GOARCH${GOARM:+ GOARM=$GOARM} ($CC, static) -> ${OUT#"$ROOT"/}"
		mkdir -p "$BIN_DIR"
		cd "$ROOT"
		local errf=$CROSS_DIR/$1/go-build.log
		if ! "$GO" build -trimpath -tags "$CROSS_TAGS" \
			-ldflags "-s -w -X main.version=$VERSION $CROSS_LDFLAGS_LINK" -o "$OUT" . 2>"$errf"; then
			cat "$errf" >&2
			die "go build failed for $1"
		fi
		# The linker's one expected warning is the documented cost of static glibc:
		# dlopen (PKCS#11 modules) needs a module built against the same glibc.
		if grep -q "Using 'dlopen' in statically linked" "$errf"; then
			log "note: static glibc + dlopen: a PKCS#11 module must be built against glibc $(glibc_version "$TRIPLET") (docs/cross-and-image.md)"
		fi
		grep -v -e "^# " -e "in function \`" -e "statically linked applications requires at runtime" "$errf" >&2 || true
	)
}

report() {
	local name info size mib fail=0
	printf '\n%-28s %10s %8s  %s\n' binary bytes MiB file >&2
	for name in $CROSS_ARCHES; do
		arch_vars "$name"
		info=$(file -b "$OUT")
		size=$(stat -c %s "$OUT")
		mib=$(awk -v s="$size" 'BEGIN{printf "%.1f", s/1048576}')
		printf '%-28s %10s %8s  %s\n' "${OUT#"$ROOT"/}" "$size" "$mib" "$info" >&2
		case $info in *"statically linked"*) ;; *) echo "cross: ${OUT#"$ROOT"/} is not statically linked" >&2; fail=1 ;; esac
		case $info in *stripped*) ;; *) echo "cross: ${OUT#"$ROOT"/} is not stripped" >&2; fail=1 ;; esac
		if [ "$name" = arm64 ] && [ "$size" -ge $((ARM64_LIMIT_MIB * 1048576)) ]; then
			echo "cross: arm64 binary is $mib MiB, over the $ARM64_LIMIT_MIB MiB limit" >&2
			fail=1
		fi
	done
	return $fail
}

cmd=${1:-build}
[ $# -gt 0 ] && shift
case $cmd in
deps) install_missing "${HOST_PACKAGES[@]}" ;;
sysroot)
	install_missing "${HOST_PACKAGES[@]}"
	for a in $CROSS_ARCHES; do pcsc_static "$a"; done
	;;
apt) apt_private "$@" ;;
env)
	# cross.sh env NAME: print the build environment (for scripts: eval "$(cross.sh env arm64)").
	pcsc_static "$1" >&2
	cross_env "$1"
	printf 'export CGO_ENABLED=1 GOOS=linux GOARCH=%s CC=%s PKG_CONFIG_LIBDIR=%s PKG_CONFIG_SYSROOT_DIR=%s PKG_CONFIG_PATH=\n' \
		"$GOARCH" "$CC" "$PKG_CONFIG_LIBDIR" "$PKG_CONFIG_SYSROOT_DIR"
	if [ -n "${GOARM:-}" ]; then echo "export GOARM=$GOARM"; else echo "unset GOARM"; fi
	printf 'CROSS_TAGS=%q\nCROSS_LDFLAGS_LINK=%q\nQEMU=%s\nSYSROOT=%q\n' "$CROSS_TAGS" "$CROSS_LDFLAGS_LINK" "$QEMU" "$SYSROOT"
	;;
glibc)
	# cross.sh glibc NAME: the glibc linked into that target's binary.
	arch_vars "$1"
	pkg=libc6-dev-$DEBARCH-cross
	echo "$(glibc_version "$TRIPLET") ($pkg $(dpkg-query -W -f='${Version}' "$pkg"))"
	;;
build)
	install_missing "${HOST_PACKAGES[@]}"
	# One at a time: the machine is shared.
	for a in $CROSS_ARCHES; do build_one "$a"; done
	report
	;;
*) die "usage: cross.sh [build|deps|sysroot|env NAME|apt ARGS...]" ;;
esac
