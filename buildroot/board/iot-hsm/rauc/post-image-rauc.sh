#!/bin/sh
# Post-image step (add it to BR2_ROOTFS_POST_IMAGE_SCRIPT after post-image.sh):
# builds images/update.raucb from rootfs.ext4 with host-rauc, signed with
# RAUC_CERT/RAUC_KEY (a certificate under the keyring's CA; the key may be a PKCS#11
# URI, so it can stay in an HSM). Publish update.raucb with its SHA-256 and size:
#   iot-hsm console ota.update --url https://.../update.raucb --sha256 ... --size ...
set -eu
: "${RAUC_CERT:?set RAUC_CERT}" "${RAUC_KEY:?set RAUC_KEY}"
HERE=$(dirname "$0")
WORK="$BUILD_DIR/rauc-bundle"
rm -rf "$WORK"; mkdir -p "$WORK"
cp "$BINARIES_DIR/rootfs.ext4" "$WORK/"
VERSION=$(git -C "$HERE/../../.." describe --always --dirty 2>/dev/null || echo unknown)
sed "s/#VERSION#/$VERSION/" "$HERE/manifest.raucm.in" > "$WORK/manifest.raucm"
rm -f "$BINARIES_DIR/update.raucb"
"$HOST_DIR/bin/rauc" bundle --cert="$RAUC_CERT" --key="$RAUC_KEY" "$WORK" "$BINARIES_DIR/update.raucb"
sha256sum "$BINARIES_DIR/update.raucb"
stat -c '%s bytes' "$BINARIES_DIR/update.raucb"
