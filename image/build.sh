#!/usr/bin/env bash
# Builds the appliance's disk image from Debian's packages (docs/image.md):
# GPT with an EFI system partition (GRUB, RAUC's grub A/B scheme), root
# filesystems A and B, and the data partition; plus signed RAUC bundles of the root
# filesystem. Cached: nothing is rebuilt while the recipe and the binary are the same.
#
# Environment: BIN (the iot-hsm binary, required), OUT (default image/build/amd64),
# TEST=1 (the VM test's image: test/ copied over the root filesystem, with the test
# keys made here for the broker), BUNDLE_VERSION (the good bundle's version), ARCH
# (amd64 or arm64: Debian's architecture of the image and of BIN), FLAVOR (efi, the
# default: GRUB on UEFI; raspi: the Raspberry Pi 3/4, arm64 only, with the Pi's
# firmware and U-Boot on an MBR disk, RAUC's uboot backend).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
ARCH=${ARCH:-amd64}
FLAVOR=${FLAVOR:-efi}
OUT=${OUT:-$here/build/$ARCH${FLAVOR#efi}}
BUNDLE_VERSION=${BUNDLE_VERSION:-v99.0.0}
SUITE=bookworm
# The kernel comes from here (pinned: image/rootfs/etc/apt/preferences.d/iot-hsm-kernel).
KERNEL_SUITE=trixie-backports
MIRROR=http://deb.debian.org/debian
SLOT_MB=768
DATA_MB=512
ESP_MB=64
# The Pi image's MBR disk identifier: its partitions are PARTUUID=<id>-0N to the
# kernel, RAUC and U-Boot's boot script, whatever the SD card or USB disk is called.
RASPI_DISKID=1075a1f0
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
# RAUC's compatible: a bundle for one kind of appliance is refused by the others.
COMPATIBLE=iot-hsm-$ARCH
# The Pi's kernel console is its mini UART (ttyS1 with the upstream device trees);
# there is no second port for the test shell.
case $ARCH/$FLAVOR in
*/efi) ;;
arm64/raspi) CONSOLE=ttyS1 SHELL_TTY='' COMPATIBLE=iot-hsm-rpi ;;
*) die "FLAVOR=$FLAVOR on ARCH=$ARCH: the flavours are efi and (arm64 only) raspi" ;;
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
		echo "$ARCH $FLAVOR $BUNDLE_VERSION ${TEST:-}"
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
	local pkgs=systemd-sysv,udev,dbus,kmod,softhsm2,libpcsclite1,pcscd,libccid,mosquitto,rauc,rauc-service,gpiod
	# procps: /bin/kill, which the unit's ExecReload= runs.
	pkgs=$pkgs,procps,linux-image-$ARCH,initramfs-tools,zstd
	# squashfs-tools: unsquashfs, with which RAUC reads a plain bundle's manifest.
	pkgs=$pkgs,squashfs-tools
	local components=main late=()
	local ex=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
		--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
		# The newer kernel's hooks there would make its scripts call run-parts with two
		# directories, which Debian 12's refuses; 00-iot-hsm-boot does their work.
		--dpkgopt='path-exclude=/usr/share/kernel/*')
	local skip=(drivers/gpu drivers/media drivers/net/wireless drivers/infiniband
		drivers/scsi drivers/staging drivers/iio drivers/bluetooth drivers/isdn drivers/mtd
		drivers/input/touchscreen drivers/hwmon drivers/net/can drivers/thunderbolt
		net/wireless net/mac80211 net/bluetooth sound)
	# Only what boots a virtio disk goes into the initrd (6 MB instead of 60); a Pi's
	# initrd has what Debian's own Pi images have (MODULES=most: the SD card's
	# controllers and their regulators and clocks differ between the Pi 3 and 4).
	local modules=list
	case $FLAVOR in
	efi)
		pkgs=$pkgs,grub-common
		[ -z "$FOREIGN" ] || pkgs=$pkgs,grub-efi-$ARCH-bin
		skip+=(drivers/net/ethernet)
		;;
	raspi)
		# U-Boot, which make_firmware copies to the FAT partition; fw_setenv for RAUC's
		# uboot backend. The Pi's firmware is only downloaded (into $OUT/raspi-firmware):
		# installed, raspi-firmware's hooks would copy every new kernel onto the FAT
		# partition, but here the kernel is the slot's, loaded by U-Boot.
		pkgs=$pkgs,u-boot-rpi,libubootenv-tool
		components="main non-free-firmware"
		# shellcheck disable=SC2016 # expanded by mmdebstrap's hook, not here
		late+=(--customize-hook='chroot "$1" sh -c "cd /tmp && apt-get download -q raspi-firmware"'
			--customize-hook="rm -rf '$OUT/raspi-firmware' && dpkg-deb -x \"\$1\"/tmp/raspi-firmware_*.deb '$OUT/raspi-firmware'"
			--customize-hook='rm "$1"/tmp/raspi-firmware_*.deb')
		modules=most
		;;
	esac
	local t
	for t in "${skip[@]}"; do
		# dpkg sees the packages' own paths (/usr/lib since the kernel's 7.2).
		ex+=(--dpkgopt="path-exclude=/usr/lib/modules/*/kernel/$t/*")
	done
	# shellcheck disable=SC2016 # expanded by mmdebstrap's hook, not here
	local setup='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d" "$1/etc/kernel/postinst.d"
		echo MODULES='$modules' >"$1/etc/initramfs-tools/conf.d/iot-hsm.conf"
		printf "%s\n" virtio_pci virtio_blk ext4 >"$1/usr/share/initramfs-tools/modules.d/iot-hsm"'
	# The kernel's pin and its /boot files are needed while the packages install.
	local early=(--setup-hook="$setup"
		--setup-hook="copy-in $here/rootfs/etc/apt/preferences.d/iot-hsm-kernel /etc/apt/preferences.d"
		--setup-hook="copy-in $here/rootfs/etc/kernel/postinst.d/00-iot-hsm-boot /etc/kernel/postinst.d")
	rm -rf "$root"
	[ -z "$FOREIGN" ] || binfmt
	nice -n 10 mmdebstrap --mode=root --variant=apt --architectures="$ARCH" --include="$pkgs" \
		--aptopt='APT::Install-Recommends "false"' "${ex[@]}" "${early[@]}" "${late[@]}" \
		"$SUITE" "$root" "deb $MIRROR $SUITE $components" "deb $MIRROR $KERNEL_SUITE main" >"$OUT/mmdebstrap.log" 2>&1 || {
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
	if [ "$FLAVOR" = raspi ]; then
		cp -a "$here/raspi/rootfs/." "$root/"
		install -d -m 0755 "$root/boot/firmware"
	fi
	install -m 0644 "$here/../dist/mosquitto/iot-hsm.conf" "$root/etc/mosquitto/conf.d/iot-hsm.conf"
	install -m 0644 "$here/../dist/mosquitto/iot-hsm.acl" "$root/etc/mosquitto/iot-hsm/iot-hsm.acl"
	install -m 0644 "$OUT/keys/rauc-ca.pem" "$root/etc/rauc/keyring.pem"
	case $FLAVOR in
	efi) sed "s/#COMPATIBLE#/$COMPATIBLE/" "$here/system.conf.in" >"$root/etc/rauc/system.conf" ;;
	raspi) sed -e "s/#COMPATIBLE#/$COMPATIBLE/" -e "s/#DISKID#/$RASPI_DISKID/" "$here/raspi/system.conf" \
		>"$root/etc/rauc/system.conf" ;;
	esac
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
	if [ -n "$SHELL_TTY" ] && [ "$SHELL_TTY" != ttyS1 ]; then
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
	systemctl --root="$root" enable iot-hsm-vmtest-token.service iot-hsm-vmtest-gpio.service >/dev/null 2>&1
	# Without a port for the shell, the test reads a report on the console instead.
	local probe=iot-hsm-vmtest-shell.service
	[ -n "$SHELL_TTY" ] || probe=iot-hsm-vmtest-report.service
	systemctl --root="$root" enable "$probe" >/dev/null 2>&1
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

# The Pi's FAT partition: its GPU firmware, the kernel's device trees under the names
# the firmware looks for (upstream_kernel=1), U-Boot and its boot script. U-Boot
# writes its environment (uboot.env) here on the first boot.
make_firmware() {
	local img=$OUT/esp.img tmp=$OUT/firmware root=$OUT/rootfs
	rm -rf "$tmp" "$img" && mkdir -p "$tmp"
	cp "$OUT"/raspi-firmware/usr/lib/raspi-firmware/* "$tmp/"
	cp "$root"/usr/lib/linux-image-*/broadcom/bcm27*.dtb "$root"/usr/lib/linux-image-*/broadcom/bcm283*.dtb "$tmp/"
	cp "$root/usr/lib/u-boot/rpi_arm64/u-boot.bin" "$here/raspi/config.txt" "$tmp/"
	sed -e "s/#DISKID#/$RASPI_DISKID/" -e "s/#CONSOLE#/$CONSOLE/" "$here/raspi/boot.cmd" >"$tmp/boot.cmd"
	mkimage -A arm64 -T script -C none -n "iot-hsm A/B" -d "$tmp/boot.cmd" "$tmp/boot.scr" >/dev/null
	mkfs.vfat -n RASPIFIRM -C "$img" $((ESP_MB * 1024)) >/dev/null
	mcopy -i "$img" "$tmp"/* ::/
}

# One file system per partition (no loop devices), then the disk around them.
make_disk() {
	local disk=$OUT/disk.img
	# As small as fits (a quarter free): the bundles carry this image.
	local mb
	mb=$(du -sm "$OUT/rootfs" | cut -f1)
	rm -f "$OUT/rootfs.ext4"
	local fs_mb=$((mb * 5 / 4 + 64))
	[ "$fs_mb" -le "$SLOT_MB" ] || die "the root filesystem needs $fs_mb MiB, more than a slot's $SLOT_MB MiB"
	mke2fs -q -t ext4 -L rootfs -d "$OUT/rootfs" "$OUT/rootfs.ext4" "${fs_mb}M"
	mke2fs -q -t ext4 -L iot-hsm-data "$OUT/data.ext4" "${DATA_MB}M"
	rm -f "$disk"
	truncate -s $((1 + ESP_MB + 2 * SLOT_MB + DATA_MB + 1))M "$disk"
	if [ "$FLAVOR" = raspi ]; then
		# MBR: the Pi 3's boot ROM reads nothing else. The FAT partition is active,
		# which is where U-Boot looks for boot.scr.
		sfdisk -q "$disk" <<-SFDISK
			label: dos
			label-id: 0x$RASPI_DISKID
			start=1MiB, size=${ESP_MB}MiB, type=c, bootable
			size=${SLOT_MB}MiB, type=83
			size=${SLOT_MB}MiB, type=83
			size=${DATA_MB}MiB, type=83
		SFDISK
	else
		sfdisk -q "$disk" <<-SFDISK
			label: gpt
			start=1MiB, size=${ESP_MB}MiB, type=uefi, name=esp
			size=${SLOT_MB}MiB, type=linux, name=rootfs-a
			size=${SLOT_MB}MiB, type=linux, name=rootfs-b
			size=${DATA_MB}MiB, type=linux, name=data
		SFDISK
	fi
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
	sed -e "s/#VERSION#/$3/" -e "s/#COMPATIBLE#/$COMPATIBLE/" "$here/manifest.raucm.in" >"$dir/manifest.raucm"
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
	if [ "$FLAVOR" = raspi ]; then make_firmware; else make_esp; fi
	make_disk
	# The test's bundles, signed with the test keys: a production image has none.
	if [ "${TEST:-}" = 1 ]; then make_bundles; fi
	echo "$h" >"$OUT/stamp"
	log "built $OUT/disk.img in $((SECONDS - t0)) s"
}

main "$@"
