#!/bin/sh
# ota.reboot_command on the appliance: after an install (tryboot.pending set by the
# backend) boot the new slot once with tryboot; otherwise an ordinary reboot, which
# boots the committed slot (the fallback after "mark bad").
if [ -e "${IOT_HSM_BOOT:-/boot}/tryboot.pending" ]; then
	exec systemctl reboot "0 tryboot"
fi
exec systemctl reboot
