#!/usr/bin/env bash
# Builds the appliance's disk image from Debian's packages (docs/image.md):
# GPT with an EFI system partition (GRUB, RAUC's grub A/B scheme), root
# filesystems A and B, and the data partition; plus signed RAUC bundles of the root
# filesystem. Cached: nothing is rebuilt while the recipe and the binary are the same.
#
# Environment: BIN (the iot-hsm binary, required), OUT (default image/build/amd64),
# TEST=1 (the VM test's image: test/ copied over the root filesystem, with the test
# keys made here for the broker), BUNDLE_VERSION (the good bundle's version), ARCH
# (amd64 or arm64: Debian's architecture of the image and of BIN).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
ARCH=${ARCH:-amd64}
OUT=${OUT:-$here/build/$ARCH}
BUNDLE_VERSION=${BUNDLE_VERSION:-v99.0.0}
SUITE=bookworm
# The kernel comes from here (pinned: image/rootfs/etc/apt/preferences.d/iot-hsm-kernel).
KERNEL_SUITE=trixie-backports
MIRROR=http://deb.debian.org/debian
SLOT_MB=768
DATA_MB=512
ESP_MB=64
: "${BIN:?BIN must name the iot-hsm binary}"

log() { echo "image: $*" >&2; }
die() { log "$*"; exit 1; }

# What differs between the architectures: GRUB's platform and file name on the ESP,
# the kernel's console (the first serial port) and the test shell's port (x86's
# second UART; arm64's virt machine has one UART, so a virtio console there).
case $ARCH in
amd64) GRUB_TARGET=x86_64-efi EFI_NAME=BOOTX64.EFI CONSOLE=ttyS0 SHELL_TTY=ttyS1 QEMU_USER=qemu-x86_64 ;;
arm64) GRUB_TARGET=arm64-efi EFI_NAME=BOOTAA64.EFI CONSOLE=ttyAMA0 SHELL_TTY=hvc0 QEMU_USER=qemu-aarch64 ;;
*) die "ARCH=$ARCH: only amd64 and arm64 are supported" ;;
esac
# Another architecture than this machine's runs its maintainer scripts under
# qemu-user, and GRUB's modules for it come from its own package in the tree (Debian
# ships grub-efi-arm64-bin for arm64 only).
FOREIGN=
[ "$ARCH" = "$(dpkg --print-architecture)" ] || FOREIGN=1

# The cache key: everything the image is made of.
input_hash() {
	{
		find "$here" -path "$here/build" -prune -o -type f -print0 | sort -z | xargs -0 sha256sum | sed "s|$here/||"
		sha256sum "$BIN" | cut -d' ' -f1
		cat "$here/../dist/iot-hsm.service" "$here/../dist/mosquitto/"*
		echo "$ARCH $BUNDLE_VERSION ${TEST:-}"
	} | sha256sum | cut -d' ' -f1
}

# Test keys made here, never committed: RAUC's bundle signer and the broker's TLS.
make_keys() {
	local k=$OUT/keys
	[ -s "$k/complete" ] && return
	mkdir -p "$k"
	(
		cd "$k"
		cert() { # name cn [signer] [ext]
			openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
				-keyout "$1.key" -out "$1.csr" 2>/dev/null
			openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial \
				-days 3650 -out "$1.pem" ${4:+-extfile "$4"} 2>/dev/null
		}
		ca() {
			openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
				-subj "/CN=$2" -keyout "$1.key" -out "$1.pem" 2>/dev/null
		}
		ca rauc-ca "iot-hsm test RAUC CA"
		# No extended key usage: RAUC checks the S/MIME purpose, which codeSigning fails.
		printf 'keyUsage=digitalSignature\n' >signer.ext
		cert rauc-signer "iot-hsm test bundle signer" rauc-ca signer.ext
		ca broker-ca "iot-hsm test broker CA"
		printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >server.ext
		cert server localhost broker-ca server.ext
		ca clients-ca "iot-hsm test MQTT clients CA"
		cert appliance ihsm-vm clients-ca
		cert controller pki-controller clients-ca
		# Test keys only: the test runs QEMU and its clients as the invoking user.
		chmod 0644 ./*.pem ./*.key
		echo ok >complete
	)
}

# The root filesystem tree from Debian's packages.
bootstrap() {
	local root=$1
	local pkgs=systemd-sysv,udev,dbus,kmod,softhsm2,libpcsclite1,pcscd,libccid,mosquitto,rauc,rauc-service,grub-common,gpiod
	# procps: /bin/kill, which the unit's ExecReload= runs.
	pkgs=$pkgs,procps,linux-image-$ARCH,initramfs-tools,zstd
	# squashfs-tools: unsquashfs, with which RAUC reads a plain bundle's manifest.
	pkgs=$pkgs,squashfs-tools
	[ -z "$FOREIGN" ] || pkgs=$pkgs,grub-efi-$ARCH-bin
	local ex=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
		--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
		# The newer kernel's hooks there would make its scripts call run-parts with two
		# directories, which Debian 12's refuses; 00-iot-hsm-boot does their work.
		--dpkgopt='path-exclude=/usr/share/kernel/*')
	local t
	for t in drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet drivers/infiniband \
		drivers/scsi drivers/staging drivers/iio drivers/bluetooth drivers/isdn drivers/mtd \
		drivers/input/touchscreen drivers/hwmon drivers/net/can drivers/infiniband drivers/thunderbolt \
		net/wireless net/mac80211 net/bluetooth sound; do
		# dpkg sees the packages' own paths (/usr/lib since the kernel's 7.2).
		ex+=(--dpkgopt="path-exclude=/usr/lib/modules/*/kernel/$t/*")
	done
	# Only what boots a virtio disk goes into the initrd (6 MB instead of 60).
	# shellcheck disable=SC2016 # expanded by mmdebstrap's hook, not here
	local setup='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d" "$1/etc/kernel/postinst.d"
		echo MODULES=list >"$1/etc/initramfs-tools/conf.d/iot-hsm.conf"
		printf "%s\n" virtio_pci virtio_blk ext4 >"$1/usr/share/initramfs-tools/modules.d/iot-hsm"'
	# The kernel's pin and its /boot files are needed while the packages install.
	local early=(--setup-hook="$setup"
		--setup-hook="copy-in $here/rootfs/etc/apt/preferences.d/iot-hsm-kernel /etc/apt/preferences.d"
		--setup-hook="copy-in $here/rootfs/etc/kernel/postinst.d/00-iot-hsm-boot /etc/kernel/postinst.d")
	rm -rf "$root"
	[ -z "$FOREIGN" ] || binfmt
	nice -n 10 mmdebstrap --mode=root --variant=apt --architectures="$ARCH" --include="$pkgs" \
		--aptopt='APT::Install-Recommends "false"' "${ex[@]}" "${early[@]}" \
		"$SUITE" "$root" "deb $MIRROR $SUITE main" "deb $MIRROR $KERNEL_SUITE main" >"$OUT/mmdebstrap.log" 2>&1 || {
		tail -30 "$OUT/mmdebstrap.log" >&2
		return 1
	}
}

# A foreign tree's programs run through binfmt_misc and qemu-user-static: mounted
# and enabled here when they are not yet (binfmt-support registers the handlers).
binfmt() {
	arch-test "$ARCH" >/dev/null 2>&1 && return
	[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	update-binfmts --enable "$QEMU_USER" || true
	arch-test "$ARCH" >/dev/null 2>&1 ||
		die "cannot run $ARCH programs: qemu-user-static's $QEMU_USER is not registered in binfmt_misc (update-binfmts --display $QEMU_USER)"
}

# What makes the Debian tree the appliance.
configure() {
	local root=$1
	install -m 0755 "$BIN" "$root/usr/bin/iot-hsm"
	install -m 0644 "$here/../dist/iot-hsm.service" "$root/usr/lib/systemd/system/iot-hsm.service"
	cp -a "$here/rootfs/." "$root/"
	install -d -m 0755 "$root/etc/mosquitto/iot-hsm" "$root/etc/rauc" "$root/boot/efi"
	install -m 0644 "$here/../dist/mosquitto/iot-hsm.conf" "$root/etc/mosquitto/conf.d/iot-hsm.conf"
	install -m 0644 "$here/../dist/mosquitto/iot-hsm.acl" "$root/etc/mosquitto/iot-hsm/iot-hsm.acl"
	install -m 0644 "$OUT/keys/rauc-ca.pem" "$root/etc/rauc/keyring.pem"
	sed "s/#ARCH#/$ARCH/" "$here/system.conf.in" >"$root/etc/rauc/system.conf"
	echo iot-hsm >"$root/etc/hostname"
	: >"$root/etc/machine-id"
	systemctl --root="$root" enable iot-hsm.service pcscd.socket mosquitto.service systemd-networkd.service \
		iot-hsm-mark-good.service >/dev/null 2>&1
	if [ "${TEST:-}" = 1 ]; then test_overlay "$root"; fi
	cp -L "$root/vmlinuz" "$OUT/vmlinuz"
	cp -L "$root/initrd.img" "$OUT/initrd.img"
}

# The VM test's configuration, broker certificates and test units.
test_overlay() {
	local root=$1 k=$OUT/keys
	cp -a "$here/test/." "$root/"
	local unit=$root/usr/lib/systemd/system/iot-hsm-vmtest-shell.service
	if [ "$SHELL_TTY" != ttyS1 ]; then
		sed -i -e "s/ttyS1/$SHELL_TTY/g" \
			-e "/^\[Unit\]/a BindsTo=dev-$SHELL_TTY.device\nAfter=dev-$SHELL_TTY.device" "$unit"
	fi
	install -m 0644 "$k/server.pem" "$k/clients-ca.pem" "$root/etc/mosquitto/iot-hsm/"
	install -m 0640 "$k/server.key" "$root/etc/mosquitto/iot-hsm/"
	chroot "$root" chgrp mosquitto /etc/mosquitto/iot-hsm/server.key
	install -m 0644 "$k/broker-ca.pem" "$root/etc/iot-hsm/broker-ca.pem"
	install -m 0644 "$k/appliance.pem" "$root/etc/iot-hsm/client.pem"
	install -m 0600 "$k/appliance.key" "$root/etc/iot-hsm/client.key"
	chmod 0600 "$root/etc/iot-hsm/vmtest.pin"
	chmod 0750 "$root/etc/iot-hsm"
	systemctl --root="$root" enable iot-hsm-vmtest-token.service iot-hsm-vmtest-shell.service \
		iot-hsm-vmtest-gpio.service >/dev/null 2>&1
}

# The EFI system partition: a standalone GRUB, its A/B script and environment.
make_esp() {
	local img=$OUT/esp.img tmp=$OUT/esp
	rm -rf "$tmp" "$img" && mkdir -p "$tmp"
	printf 'search --no-floppy --file --set=root /EFI/BOOT/grub.cfg\nconfigfile /EFI/BOOT/grub.cfg\n' >"$tmp/embed.cfg"
	local mods=/usr/lib/grub/$GRUB_TARGET
	[ -z "$FOREIGN" ] || mods=$OUT/rootfs/usr/lib/grub/$GRUB_TARGET
	grub-mkstandalone -O "$GRUB_TARGET" -d "$mods" -o "$tmp/$EFI_NAME" --modules="part_gpt fat ext2" \
		--locales= --themes= --fonts= "boot/grub/grub.cfg=$tmp/embed.cfg"
	sed "s/console=ttyS0/console=$CONSOLE/" "$here/grub.cfg" >"$tmp/grub.cfg"
	grub-editenv "$tmp/grubenv" create
	grub-editenv "$tmp/grubenv" set ORDER="A B" A_OK=1 B_OK=0 A_TRY=0 B_TRY=0
	mkfs.vfat -n ESP -C "$img" $((ESP_MB * 1024)) >/dev/null
	mmd -i "$img" ::/EFI ::/EFI/BOOT
	mcopy -i "$img" "$tmp/$EFI_NAME" "$tmp/grub.cfg" "$tmp/grubenv" ::/EFI/BOOT/
}

# One file system per partition (no loop devices), then the disk around them.
make_disk() {
	local disk=$OUT/disk.img
	# As small as fits (a quarter free): the bundles carry this image.
	local mb
	mb=$(du -sm "$OUT/rootfs" | cut -f1)
	rm -f "$OUT/rootfs.ext4"
	mke2fs -q -t ext4 -L rootfs -d "$OUT/rootfs" "$OUT/rootfs.ext4" "$((mb * 5 / 4 + 64))M"
	mke2fs -q -t ext4 -L iot-hsm-data "$OUT/data.ext4" "${DATA_MB}M"
	rm -f "$disk"
	truncate -s $((1 + ESP_MB + 2 * SLOT_MB + DATA_MB + 1))M "$disk"
	sfdisk -q "$disk" <<-SFDISK
		label: gpt
		start=1MiB, size=${ESP_MB}MiB, type=uefi, name=esp
		size=${SLOT_MB}MiB, type=linux, name=rootfs-a
		size=${SLOT_MB}MiB, type=linux, name=rootfs-b
		size=${DATA_MB}MiB, type=linux, name=data
	SFDISK
	local off=1
	put() { dd if="$1" of="$disk" bs=1M seek="$off" conv=notrunc,sparse status=none; off=$((off + $2)); }
	put "$OUT/esp.img" "$ESP_MB"
	put "$OUT/rootfs.ext4" 0
	off=$((off + 2 * SLOT_MB)) # B stays empty until the first update
	put "$OUT/data.ext4" "$DATA_MB"
}

# A signed bundle of rootfs image $2 with version $3, as $1.
bundle() {
	local dir=$OUT/bundle-$1
	rm -rf "$dir" "$OUT/$1.raucb" && mkdir -p "$dir"
	sed -e "s/#VERSION#/$3/" -e "s/#ARCH#/$ARCH/" "$here/manifest.raucm.in" >"$dir/manifest.raucm"
	cp "$2" "$dir/rootfs.ext4"
	rauc bundle --cert "$OUT/keys/rauc-signer.pem" --key "$OUT/keys/rauc-signer.key" \
		"$dir" "$OUT/$1.raucb" >/dev/null
	rm -rf "$dir"
}

# The good bundle is the same tree marked with its version; the bad one's daemon
# never reaches its broker, so it never becomes healthy.
make_bundles() {
	local good=$OUT/rootfs-good.ext4 bad=$OUT/rootfs-bad.ext4
	cp "$OUT/rootfs.ext4" "$good"
	echo "$BUNDLE_VERSION" >"$OUT/slot-version"
	debugfs -w -R "write $OUT/slot-version /etc/iot-hsm-slot-version" "$good" >/dev/null 2>&1
	bundle good "$good" "$BUNDLE_VERSION"
	cp "$OUT/rootfs.ext4" "$bad"
	sed 's/:8883"/:8884"/' "$OUT/rootfs/etc/iot-hsm/config.toml" >"$OUT/bad-config.toml"
	debugfs -w -R "rm /etc/iot-hsm/config.toml" "$bad" >/dev/null 2>&1
	debugfs -w -f - "$bad" >/dev/null 2>&1 <<-DEBUGFS
		write $OUT/bad-config.toml /etc/iot-hsm/config.toml
		set_inode_field /etc/iot-hsm/config.toml mode 0100640
	DEBUGFS
	bundle bad "$bad" "${BUNDLE_VERSION%.0}.1"
	rm -f "$good" "$bad"
}

main() {
	mkdir -p "$OUT"
	local h
	h=$(input_hash)
	if [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$h" ] && [ -s "$OUT/disk.img" ]; then
		log "cached ($OUT, inputs $h)"
		return
	fi
	rm -f "$OUT/stamp"
	local t0=$SECONDS
	make_keys
	log "bootstrapping Debian $SUITE ($ARCH)"
	# REUSE_ROOTFS=1: keep the last bootstrap's tree (while working on the recipe).
	if [ "${REUSE_ROOTFS:-}" != 1 ] || [ ! -d "$OUT/rootfs/usr" ]; then bootstrap "$OUT/rootfs"; fi
	log "bootstrap took $((SECONDS - t0)) s"
	configure "$OUT/rootfs"
	make_esp
	make_disk
	make_bundles
	echo "$h" >"$OUT/stamp"
	log "built $OUT/disk.img in $((SECONDS - t0)) s"
}

main "$@"
