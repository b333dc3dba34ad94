#!/bin/sh
# RAUC custom bootloader backend for the Raspberry Pi's tryboot (firmware of
# 2021-03 and later). The boot partition holds cmdline-A.txt and cmdline-B.txt
# (root=/dev/mmcblk0p2 rauc.slot=A, root=/dev/mmcblk0p3 rauc.slot=B); config.txt
# names the committed one (cmdline=cmdline-X.txt), tryboot.txt the one to try.
# `reboot "0 tryboot"` (reboot.sh) boots tryboot.txt once; any later reboot (a
# crash, the watchdog, the daemon's "mark bad" reboot) boots config.txt again: the
# fallback needs nobody's cooperation.
set -eu
BOOT=${IOT_HSM_BOOT:-/boot}
cmdline_of() { sed -n 's/^cmdline=cmdline-\(.\)\.txt$/\1/p' "$1" 2>/dev/null | tail -n 1; }
current() { sed -n 's/.*rauc\.slot=\([AB]\).*/\1/p' /proc/cmdline; }
committed() { cmdline_of "$BOOT/config.txt"; }
set_cmdline() { # file slot
	tmp="$1.new"
	grep -v '^cmdline=' "$1" > "$tmp" 2>/dev/null || true
	echo "cmdline=cmdline-$2.txt" >> "$tmp"
	sync "$tmp"; mv "$tmp" "$1"; sync "$BOOT"
}
case "$1" in
get-primary)
	if [ -e "$BOOT/tryboot.pending" ]; then cmdline_of "$BOOT/tryboot.txt"; else committed; fi ;;
set-primary)
	if [ "$2" = "$(committed)" ]; then rm -f "$BOOT/tryboot.pending"; exit 0; fi
	cp "$BOOT/config.txt" "$BOOT/tryboot.txt.new"; mv "$BOOT/tryboot.txt.new" "$BOOT/tryboot.txt"
	set_cmdline "$BOOT/tryboot.txt" "$2"
	touch "$BOOT/tryboot.pending"; sync "$BOOT" ;;
get-state)
	if [ "$2" = "$(committed)" ]; then echo good; else echo bad; fi ;;
set-state)
	# good on the booted slot commits it: config.txt names it from now on.
	if [ "$3" = good ] && [ "$2" = "$(current)" ]; then
		set_cmdline "$BOOT/config.txt" "$2"; rm -f "$BOOT/tryboot.pending"
	elif [ "$3" = bad ]; then
		rm -f "$BOOT/tryboot.pending"
	fi ;;
get-current)
	current ;;
*)
	echo "tryboot-backend: unknown request $1" >&2; exit 1 ;;
esac
