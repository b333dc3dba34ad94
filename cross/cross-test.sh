#!/usr/bin/env bash
# make cross-test: shows that the static ARM binaries of `make cross` run, under
# qemu-user (Debian's qemu-user-static):
#   1. both are statically linked and stripped, and `iot-hsm version` runs for both;
#   2. the unit tests of the packages that need no host service, built for arm64 and
#      arm (GOARM=7) with the same static cgo flags and run with `go test -exec qemu-*`;
#      hsm/pkcs11's tests also run for arm64 against Debian's arm64 SoftHSM2 module;
#   3. end to end: the arm64 daemon dlopens Debian's arm64 SoftHSM2 module (from
#      `apt-get download` + `dpkg-deb -x`, never installed), the host console drives
#      slot.provision and slot.selfsign over MQTT, and openssl verifies the root. This is
#      the proof that dlopen works in the static glibc binary.
#
# Environment: HOST_BIN (the host build of iot-hsm for the console; default bin/iot-hsm),
# CROSS_DIR, BIN_DIR (as cross.sh), CROSS_TEST_LISTEN (default 127.0.0.1:18841),
# CROSS_TEST_PACKAGES (override the package list of step 2), CROSS_TEST_STEPS (default
# "1 2 3").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CROSS=$ROOT/cross/cross.sh
CROSS_DIR=${CROSS_DIR:-$ROOT/cross/build}
BIN_DIR=${BIN_DIR:-$ROOT/bin}
HOST_BIN=${HOST_BIN:-$ROOT/bin/iot-hsm}
GO=${GO:-go}
LISTEN=${CROSS_TEST_LISTEN:-127.0.0.1:18841}
STEPS=" ${CROSS_TEST_STEPS:-1 2 3} "
step() { case $STEPS in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
export CROSS_DIR BIN_DIR GO

# Packages whose tests need no service of the host (no broker, no pcscd, no token
# shared with the host): pure Go, bbolt files, and openssl run as a host program
# (ca and hsm/pemkey verify with it; a process under qemu-user runs host binaries
# natively through execve).
PACKAGES=${CROSS_TEST_PACKAGES:-./protocol ./config ./store ./hsm ./hsm/pemkey ./ca}

# Debian's arm64 SoftHSM2 module and what it needs at run time (apt-cache depends
# libsofthsm2): extracted, not installed, into a directory the emulated process reads.
ARM64_DEBS="libsofthsm2 libssl3 libstdc++6 libgcc-s1 libc6"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'cross-test: %s\n' "$*" >&2; exit 1; }
ok=0
pass() { ok=$((ok + 1)); printf 'ok: %s\n' "$*"; }

[ -x "$HOST_BIN" ] || die "$HOST_BIN missing (make build)"
HOST_BIN=$(cd "$(dirname "$HOST_BIN")" && pwd)/$(basename "$HOST_BIN")
for a in arm64 armv7; do [ -x "$BIN_DIR/iot-hsm-linux-$a" ] || die "$BIN_DIR/iot-hsm-linux-$a missing (make cross)"; done

# Host tools: qemu-user, and SoftHSM2/openssl/pkcs11-tool for the end-to-end run.
bash "$CROSS" deps
missing=""
for p in qemu-user-static softhsm2 opensc openssl; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "installing:$missing"
	SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
	# shellcheck disable=SC2086
	$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq &&
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing
fi

# ---------------------------------------------------------------------------------
if step 1; then
log "1. the binaries: static, stripped, and they run under qemu-user"
for a in arm64 armv7; do
	bin=$BIN_DIR/iot-hsm-linux-$a
	eval "$(bash "$CROSS" env "$a")"
	info=$(file -b "$bin")
	echo "$(basename "$bin"): $info"
	case $info in *"statically linked"*stripped*) ;; *) die "$bin is not a stripped static binary" ;; esac
	out=$("$QEMU" "$bin" version)
	echo "$QEMU $(basename "$bin") version: $out"
	case $out in "iot-hsm "*) pass "$a: iot-hsm version under $QEMU" ;; *) die "unexpected version output: $out" ;; esac
done
fi

# ---------------------------------------------------------------------------------
# The arm64 root with SoftHSM2 (steps 2 and 3).
ARM64_ROOT=$CROSS_DIR/arm64/rootfs
MODULE=$ARM64_ROOT/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so
if [ ! -f "$ARM64_ROOT/.complete" ]; then
	log "Debian's arm64 SoftHSM2: apt-get download + dpkg-deb -x into ${ARM64_ROOT#"$ROOT"/}"
	rm -rf "$ARM64_ROOT" "$CROSS_DIR/arm64/debs"
	mkdir -p "$ARM64_ROOT" "$CROSS_DIR/arm64/debs"
	# shellcheck disable=SC2046
	# shellcheck disable=SC2086
	(cd "$CROSS_DIR/arm64/debs" && bash "$CROSS" apt download -qq $(printf '%s:arm64 ' $ARM64_DEBS))
	for d in "$CROSS_DIR"/arm64/debs/*.deb; do
		echo "  $(basename "$d")"
		dpkg-deb -x "$d" "$ARM64_ROOT"
	done
	[ -f "$MODULE" ] || die "no $MODULE in the extracted packages"
	touch "$ARM64_ROOT/.complete"
fi
# The dynamic loader of the static binary (glibc's static dlopen) searches
# LD_LIBRARY_PATH for the module's libssl, libstdc++ and the libc.so.6 it needs.
ARM64_LIBS=$ARM64_ROOT/lib/aarch64-linux-gnu:$ARM64_ROOT/usr/lib/aarch64-linux-gnu
static_glibc=$(bash "$CROSS" glibc arm64)
module_glibc=$(dpkg-deb -f "$(ls "$CROSS_DIR"/arm64/debs/libc6_*.deb)" Version)
echo "glibc linked into the arm64 binary: $static_glibc; glibc the arm64 module runs with: libc6:arm64 $module_glibc"

# ---------------------------------------------------------------------------------
if step 2; then
log "2. unit tests built for ARM and run under qemu-user: $PACKAGES"
for a in arm64 armv7; do
	(
		eval "$(bash "$CROSS" env "$a")"
		cd "$ROOT"
		echo "--- $a: go test -exec $QEMU $PACKAGES"
		# shellcheck disable=SC2086
		"$GO" test -count=1 -timeout 20m -exec "$QEMU" -tags "$CROSS_TAGS" -ldflags "$CROSS_LDFLAGS_LINK" $PACKAGES 2>&1 |
			grep -v -e "in function \`" -e "statically linked applications requires at runtime" -e '^# '
		exit "${PIPESTATUS[0]}"
	) || die "unit tests failed under qemu for $a"
	pass "$a: unit tests of $PACKAGES under qemu"
done
(
	eval "$(bash "$CROSS" env arm64)"
	cd "$ROOT"
	export SOFTHSM2_MODULE=$MODULE LD_LIBRARY_PATH=$ARM64_LIBS
	"$GO" test -c -o "$CROSS_DIR/arm64/pkcs11.test" -tags "$CROSS_TAGS" -ldflags "$CROSS_LDFLAGS_LINK" ./hsm/pkcs11 \
		2>"$CROSS_DIR/arm64/pkcs11.build.log" || { cat "$CROSS_DIR/arm64/pkcs11.build.log"; exit 1; }
	cd hsm/pkcs11
	# TestCertificateIsPairedWithKey reads the token with the host's pkcs11-tool, which
	# cannot load an arm64 module: not run here.
	echo "--- arm64: hsm/pkcs11 tests in one process under $QEMU, Debian's arm64 SoftHSM2 module"
	"$QEMU" "$CROSS_DIR/arm64/pkcs11.test" -test.count=1 -test.v -test.skip 'TestCertificateIsPairedWithKey' 2>&1 |
		grep -E '^(--- |ok|FAIL|PASS|panic|SIGSEGV)'
	exit "${PIPESTATUS[0]}"
) || die "hsm/pkcs11 tests failed under qemu for arm64"
pass "arm64: hsm/pkcs11 tests through the arm64 SoftHSM2 module"
fi

# ---------------------------------------------------------------------------------
if step 3; then
log "3. end to end: the arm64 daemon on Debian's arm64 SoftHSM2 module, driven by the host console"
E=$CROSS_DIR/e2e-arm64
rm -rf "$E" && mkdir -p "$E/tokens"
cat >"$E/softhsm2.conf" <<CONF
directories.tokendir = $E/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = true
CONF
export SOFTHSM2_CONF=$E/softhsm2.conf
# The token is made by the host's softhsm2-util: SoftHSM2's file store is the same on
# amd64 and arm64, and the arm64 module reads it.
softhsm2-util --init-token --free --label cross-ca --pin 1234 --so-pin 5678 >/dev/null
DEVICE=ihsm-cross-arm64
cat >"$E/config.toml" <<CONF
device_id = "$DEVICE"
state_dir = "$E/state"
log_level = "debug"
[mqtt]
# The embedded broker without --dev: --dev would add a token of the host's SoftHSM2
# module, which the arm64 daemon cannot load.
dev_broker = true
embedded_listen = "$LISTEN"
[[pkcs11]]
module = "$MODULE"
pin = "1234"
CONF

eval "$(bash "$CROSS" env arm64)"
cleanup() {
	kill -TERM "$DAEMON" 2>/dev/null || true
	wait "$DAEMON" 2>/dev/null || true
}
trap cleanup EXIT
export IOT_HSM_BROKER=tcp://$LISTEN IOT_HSM_DEVICE=$DEVICE
console() { "$HOST_BIN" console --timeout 120s "$@"; }
echo "daemon: LD_LIBRARY_PATH=<arm64 root> $QEMU bin/iot-hsm-linux-arm64 run --config $E/config.toml"
LD_LIBRARY_PATH=$ARM64_LIBS "$QEMU" "$BIN_DIR/iot-hsm-linux-arm64" run --config "$E/config.toml" >"$E/daemon.log" 2>&1 &
DAEMON=$!
up=""
for _ in $(seq 1 300); do
	if "$HOST_BIN" console devices --wait 300ms 2>/dev/null | grep -q "$DEVICE"; then up=1; break; fi
	kill -0 "$DAEMON" 2>/dev/null || break
	sleep 0.2
done
[ -n "$up" ] || { cat "$E/daemon.log"; die "the arm64 daemon did not come up"; }
console devices
console hsm.list
HSM=$(console --json hsm.list | sed -n 's/.*"id": *"\(pkcs11-[^"]*\)".*/\1/p' | head -1)
[ -n "$HSM" ] || { cat "$E/daemon.log"; die "the arm64 daemon lists no PKCS#11 token"; }
grep -m1 "libsofthsm2.so" "$E/daemon.log" || true
console slot.provision --hsm "$HSM" --slot 01 --mode generate --key-type p256 --label "cross root"
"$HOST_BIN" console make-provisioning-cert --cn "iot-hsm cross-test Root CA" --org "iot-hsm" \
	--validity 87600h --path-len 1 --out "$E/root-provisioning.pem"
console slot.selfsign --slot-id "$HSM/01" --provisioning-cert "$E/root-provisioning.pem" --out "$E/root.pem"
openssl verify -x509_strict -CAfile "$E/root.pem" "$E/root.pem"
openssl x509 -in "$E/root.pem" -noout -subject -issuer
# The key the arm64 module generated is on the token, as another program sees it: the
# host's own (amd64) SoftHSM2 module, read by OpenSC's pkcs11-tool.
host_module=$(for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do [ -f "$m" ] && echo "$m" && break; done)
pkcs11-tool --module "$host_module" --token-label cross-ca --login --pin 1234 --list-objects 2>/dev/null |
	tee "$E/objects.txt" | grep -E "Private Key|Certificate|ID:"
grep -q "Private Key Object" "$E/objects.txt" || die "the generated key is not on the token"
# The root's public key is the token's key.
pkcs11-tool --module "$host_module" --token-label cross-ca --read-object --type pubkey --id 01 -o "$E/pub.der" >/dev/null 2>&1
cmp <(openssl pkey -pubin -inform DER -in "$E/pub.der" -outform DER) <(openssl x509 -in "$E/root.pem" -noout -pubkey | openssl pkey -pubin -outform DER) ||
	die "the root's public key is not the token's key"
pass "arm64: static binary dlopened Debian's arm64 libsofthsm2.so; provision + selfsign over MQTT; openssl verifies the root"
cleanup
trap - EXIT

fi

echo
echo "cross-test: $ok passed, 0 failed"
