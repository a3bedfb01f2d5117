# pppgate lab, stage 2 (run by the initramfs's /init inside the overlay root, as /bin/sh).
# Mounts the basics, runs the scenario with its output in /out/guest.log, records the exit status
# in /out/guest.rc and powers the VM off. The host reads guest.rc; without it the run failed.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
# devtmpfs lacks these; bash's process substitution needs /dev/fd.
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
# shellcheck disable=SC1091
. /out/lab.env
echo "lab: running scenario $LAB_SCENARIO_NAME" > /dev/console
cd /
bash "$LAB_SCENARIO" > /out/guest.log 2>&1 < /dev/null
rc=$?
echo "$rc" > /out/guest.rc
echo "lab: scenario $LAB_SCENARIO_NAME exited with $rc" > /dev/console
sync
# reboot(2) right away; sysrq's power-off is asynchronous and races the 9p teardown.
exec /bin/busybox poweroff -f
