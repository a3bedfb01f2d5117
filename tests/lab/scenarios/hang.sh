# Harness test: a scenario that never finishes; the harness must kill qemu at its deadline.
# shellcheck source=tests/lab/guest/lib.sh
. "$LAB_LIB"
lab_init
fact hang.started yes
log "hang: started; sleeping forever"
while :; do nap 10; done
