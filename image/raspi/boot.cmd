# U-Boot's A/B boot for the Raspberry Pi image, with RAUC's uboot backend: the first
# slot in BOOT_ORDER with attempts left (BOOT_A_LEFT, BOOT_B_LEFT) boots and loses
# one. `rauc status mark-good` on a healthy boot gives it its attempts back, `mark-bad`
# takes them all, an install puts the new slot first with fresh attempts. A slot
# that keeps failing (crash, watchdog reset, the daemon's trial marking it bad)
# runs out, and the next one in BOOT_ORDER boots. mkimage makes boot.scr of this.
test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
# B is empty until the first update.
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 0

setenv slot
for s in ${BOOT_ORDER}; do
	if test -z "${slot}" && test "${s}" = A && test ${BOOT_A_LEFT} -gt 0; then
		setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
		setenv slot A
		setenv part 2
	fi
	if test -z "${slot}" && test "${s}" = B && test ${BOOT_B_LEFT} -gt 0; then
		setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
		setenv slot B
		setenv part 3
	fi
done
# Nothing has attempts left: the first slot in BOOT_ORDER gets another round rather
# than an appliance that never boots again.
if test -z "${slot}"; then
	echo "iot-hsm: no slot has boot attempts left; trying them again"
	setenv BOOT_A_LEFT 3
	setenv BOOT_B_LEFT 3
	saveenv
	reset
fi
saveenv
echo "iot-hsm: booting slot ${slot} (attempts left: A ${BOOT_A_LEFT}, B ${BOOT_B_LEFT})"

# The kernel, initrd and device tree are the slot's own, so an update changes them
# together. The kernel is an uncompressed Image of up to 64 MiB at kernel_addr_r;
# the device tree and the initrd go above it.
setenv fdt_addr_r 0x05800000
setenv ramdisk_addr_r 0x06000000
load ${devtype} ${devnum}:${part} ${kernel_addr_r} /vmlinuz || reset
load ${devtype} ${devnum}:${part} ${ramdisk_addr_r} /initrd.img || reset
setenv initrd_size ${filesize}
# The firmware's device tree (from the FAT partition) when the slot has none for
# this board.
if load ${devtype} ${devnum}:${part} ${fdt_addr_r} /boot/dtb/${fdtfile}; then
	setenv fdt ${fdt_addr_r}
else
	setenv fdt ${fdt_addr}
fi
setenv bootargs "root=PARTUUID=#DISKID#-0${part} rootwait rw rauc.slot=${slot} console=tty1 console=#CONSOLE#,115200 panic=10 net.ifnames=0"
booti ${kernel_addr_r} ${ramdisk_addr_r}:${initrd_size} ${fdt}
# booti returns only on failure; the attempt is already counted.
reset
