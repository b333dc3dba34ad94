#!/bin/bash
# post-image: the SD card image (genimage.cfg.in): boot, root filesystem slots A and B,
# and the data partition. Buildroot calls it with BINARIES_DIR as $1; BUILD_DIR and
# BR2_CONFIG come from its environment. DATA_SIZE (default 256M) sizes the data
# partition.
set -euo pipefail

BOARD_DIR=$(dirname "$0")
BINARIES_DIR=${1:-$BINARIES_DIR}
GENIMAGE_CFG=$BINARIES_DIR/genimage.cfg
GENIMAGE_TMP=$BUILD_DIR/genimage.tmp
DATA_SIZE=${DATA_SIZE:-256M}

# Both root slots are as large as the root filesystem image (BR2_TARGET_ROOTFS_EXT2_SIZE).
ROOTFS_SIZE=$(sed -n 's/^BR2_TARGET_ROOTFS_EXT2_SIZE="\(.*\)"$/\1/p' "$BR2_CONFIG")
[ -n "$ROOTFS_SIZE" ] || { echo "post-image: BR2_TARGET_ROOTFS_EXT2_SIZE is not set" >&2; exit 1; }

# The boot partition: every device tree and firmware file, and the kernel config.txt names.
FILES=()
for i in "$BINARIES_DIR"/*.dtb "$BINARIES_DIR"/rpi-firmware/*; do
	FILES+=("${i#"$BINARIES_DIR"/}")
done
KERNEL=$(sed -n 's/^kernel=//p' "$BINARIES_DIR/rpi-firmware/config.txt")
FILES+=("$KERNEL")
BOOT_FILES=$(printf '\\t\\t\\t"%s",\\n' "${FILES[@]}")
sed -e "s|#BOOT_FILES#|${BOOT_FILES}|" -e "s|#ROOTFS_SIZE#|${ROOTFS_SIZE}|g" -e "s|#DATA_SIZE#|${DATA_SIZE}|g" \
	"$BOARD_DIR/genimage.cfg.in" >"$GENIMAGE_CFG"

# An empty root path: genimage only assembles images already built (rootfs.ext4) and
# makes the empty data filesystem.
ROOTPATH_TMP=$(mktemp -d)
trap 'rm -rf "$ROOTPATH_TMP"' EXIT
rm -rf "$GENIMAGE_TMP"

genimage \
	--rootpath "$ROOTPATH_TMP" \
	--tmppath "$GENIMAGE_TMP" \
	--inputpath "$BINARIES_DIR" \
	--outputpath "$BINARIES_DIR" \
	--config "$GENIMAGE_CFG"

echo "iot-hsm: $BINARIES_DIR/sdcard.img (boot, rootfs A, rootfs B, data)"
