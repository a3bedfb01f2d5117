# Harness test: a scenario whose setup fails; the harness must report the exit status and logs.
# shellcheck source=tests/lab/guest/lib.sh
. "$LAB_LIB"
lab_init
fact fail.started yes
die "fail-exit: failing on purpose"
