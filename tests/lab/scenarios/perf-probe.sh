. "$LAB_LIB"
lab_init
t=$(uptime_ms); for i in $(seq 50); do /bin/true; done; fact perf.true50_ms $(( $(uptime_ms) - t ))
t=$(uptime_ms); for i in $(seq 20); do cat /proc/uptime >/dev/null; done; fact perf.cat20_ms $(( $(uptime_ms) - t ))
t=$(uptime_ms); for i in $(seq 10); do psql --version >/dev/null; done; fact perf.psqlv10_ms $(( $(uptime_ms) - t ))
t=$(uptime_ms); pg_start; fact perf.pg_start_ms $(( $(uptime_ms) - t ))
t=$(uptime_ms); for i in $(seq 10); do sql "select 1" >/dev/null; done; fact perf.sql10_ms $(( $(uptime_ms) - t ))
mount | grep -E "9p|overlay" > /out/mounts.txt
