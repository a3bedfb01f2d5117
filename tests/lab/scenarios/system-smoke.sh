# The system lab boots: systemd is PID 1 over the persistent disk, the boot finishes, and nothing
# the lab itself owns has failed. Prints how long the boot took (systemd-analyze).
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/system.sh"
lab_init
sys_wait_booted 300
fact smoke.pid1 "$(cat /proc/1/comm)"
fact smoke.boot "${LAB_BOOT:-1}"
fact smoke.marker_before "$(cat /var/lib/pppgate-lab-marker 2> /dev/null || echo none)"
echo "boot ${LAB_BOOT:-1}" > /var/lib/pppgate-lab-marker
sys_collect smoke
