# pppgate system lab, stage 2 under systemd (pppgate-lab.service, written by the initramfs's /init;
# see src/system.rs): runs the scenario with its output appended to /out/guest.log, records the
# exit status in /out/guest.rc and powers the VM off cleanly (services stopped, disk synced).
# shellcheck disable=SC1091
. /out/lab.env
echo "lab: boot ${LAB_BOOT:-1}: running scenario $LAB_SCENARIO_NAME under systemd" > /dev/console
cd /
bash "$LAB_SCENARIO" >> /out/guest.log 2>&1 < /dev/null
rc=$?
echo "$rc" > /out/guest.rc
echo "lab: scenario $LAB_SCENARIO_NAME (boot ${LAB_BOOT:-1}) exited with $rc; powering off" > /dev/console
sync
systemctl poweroff --no-block
