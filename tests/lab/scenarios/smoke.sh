# Harness smoke test: the guest sees the artifacts, loads the PPP/L2TP modules, and records facts.
# shellcheck source=tests/lab/guest/lib.sh
. "$LAB_LIB"
lab_init
fact smoke.kernel "$(uname -r)"
fact smoke.ppp_modules "$(grep -qw l2tp_ppp /proc/modules && grep -qw ppp_generic /proc/modules && echo ok || echo missing)"
fact smoke.plugin_readable "$([ -r "$LAB_PLUGIN" ] && echo yes || echo no)"
fact smoke.pppgate_version "$("$LAB_PPPGATE" --version)"
fact smoke.overlay_write "$(touch "$LAB_REPO/.lab-write-probe" && echo ok || echo failed)"
fact smoke.out_writable "$(touch "$LAB_OUT/.probe" && echo yes || echo no)"
fact smoke.pppd_version "$(pppd --version 2>&1 | awk '{print $3}')"
