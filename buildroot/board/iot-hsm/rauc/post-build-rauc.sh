#!/bin/sh
# Post-build step for RAUC (add it to BR2_ROOTFS_POST_BUILD_SCRIPT after
# post-build.sh): the system configuration, the tryboot backend, the reboot command
# and the keyring that bundles must chain to. RAUC_KEYRING names the operator's CA
# certificate(s) (PEM); the build stops without it rather than ship an appliance
# that accepts any bundle or none.
set -eu
TARGET=$1
HERE=$(dirname "$0")
: "${RAUC_KEYRING:?set RAUC_KEYRING to the PEM file of the bundle-signing CA}"
install -D -m 0644 "$HERE/system.conf" "$TARGET/etc/rauc/system.conf"
install -D -m 0644 "$RAUC_KEYRING" "$TARGET/etc/rauc/keyring.pem"
install -D -m 0755 "$HERE/tryboot-backend.sh" "$TARGET/usr/lib/rauc/tryboot-backend.sh"
install -D -m 0755 "$HERE/reboot.sh" "$TARGET/usr/lib/iot-hsm/reboot.sh"
mkdir -p "$TARGET/etc/iot-hsm/config.d"
