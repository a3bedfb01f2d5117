# shellcheck shell=bash
# FreeRADIUS 3.2 for lab scenarios, wired the way packaging/freeradius/ describes: rlm_sql
# postgresql on the lab's database, pppgate's exec instance `pppgate_simul` in authorize, pppgate
# as checkrad, the NAS known with nas_type pppgate, delete_stale_sessions = no. FreeRADIUS runs
# as freerad in the srv namespace, which is in group pppgate (reads /run/vpn-sessions).
# Also the radiusclient files pppd's radius.so needs (Debian ships none).
#
# Source after lib.sh:  . "$LAB_REPO/tests/lab/guest/radius.sh"
# Then: radius_prepare (after pg_start + pppgate_configure + pppgate_migrate + net_setup),
#       radius_start, radius_user NAME PASSWORD [SIMULTANEOUS_USE], radius_auth USER PASSWORD.

# FreeRADIUS 3.x keeps its configuration in /etc/freeradius/3.0 on Debian 12 and 13 alike; found,
# not assumed, so a root with another layout fails here and not half-way through a scenario.
RADDB=
for d in /etc/freeradius/*/; do
  [ -f "$d/radiusd.conf" ] && RADDB=${d%/}
done
[ -n "$RADDB" ] || die "no FreeRADIUS configuration (radiusd.conf) under /etc/freeradius"
FR_LOG=$LAB_TMP/freeradius.log

# The NAS-IP-Address radius.so sends is the address the host name resolves to (FINDINGS.md):
# make it the LNS address, which is nas.ip in pppgate.toml.
radius_nas_ip() {
  sed -i "s/^127\.0\.1\.1 lns$/$LNS_IP lns/" /etc/hosts
  grep -q "^$LNS_IP lns$" /etc/hosts || echo "$LNS_IP lns" >> /etc/hosts
  [ "$(getent hosts lns | awk '{print $1}')" = "$LNS_IP" ] || die "host name lns does not resolve to $LNS_IP"
}

# Deployment permissions (docs/SESSIONS-RADIUS.md), from the files packaging ships: group
# pppgate (sysusers.d) reads the mappings and keeps the outage markers (tmpfiles.d); freerad is
# in it.
radius_permissions() {
  local pkg=$LAB_REPO/packaging
  systemd-sysusers "$pkg/sysusers.d/pppgate.conf" || die "systemd-sysusers rejected packaging/sysusers.d/pppgate.conf"
  getent group pppgate > /dev/null || die "packaging/sysusers.d did not create group pppgate"
  usermod -aG pppgate freerad
  systemd-tmpfiles --create "$pkg/tmpfiles.d/pppgate.conf" || die "systemd-tmpfiles rejected packaging/tmpfiles.d/pppgate.conf"
  [ "$SESSIONS_DIR" = /run/vpn-sessions ] || die "the lab's sessions directory is not the packaged /run/vpn-sessions"
  [ "$(stat -c '%a %U %G' /run/vpn-sessions)" = "2750 root pppgate" ] || die "/run/vpn-sessions: $(stat -c '%a %U %G' /run/vpn-sessions)"
  [ "$(stat -c '%a %U %G' /run/pppgate)" = "2770 root pppgate" ] || die "/run/pppgate: $(stat -c '%a %U %G' /run/pppgate)"
  chmod 0644 "$PPPGATE_CONF"
}

radius_prepare() {
  radius_nas_ip
  radius_permissions
  local repo=$LAB_REPO/packaging/freeradius
  [ -f "$repo/mods-available/pppgate" ] || die "packaging/freeradius is missing in $LAB_REPO"

  # sql: postgresql on the lab database; pppgate closes stale rows itself.
  sed -i 's/^\tdialect = "sqlite"/\tdialect = "postgresql"/; s/^\tdriver = "rlm_sql_null"/\tdriver = "rlm_sql_${dialect}"/' "$RADDB/mods-available/sql"
  sed -i "s|^\tradius_db = \"radius\"|\tradius_db = \"dbname=$PG_DB host=$PG_SOCK user=postgres\"|" "$RADDB/mods-available/sql"
  sed -i 's/^\tdelete_stale_sessions = yes/\tdelete_stale_sessions = no/' "$RADDB/mods-available/sql"
  grep -qP "^\tdelete_stale_sessions = no" "$RADDB/mods-available/sql" || die "could not set delete_stale_sessions"
  ln -sf ../mods-available/sql "$RADDB/mods-enabled/sql"

  # pppgate's exec instance, as shipped but for the binary's path.
  sed "s|/usr/sbin/pppgate|$LAB_PPPGATE|; s|/etc/pppgate/pppgate.toml|$PPPGATE_CONF|" "$repo/mods-available/pppgate" \
    > "$RADDB/mods-available/pppgate"
  ln -sf ../mods-available/pppgate "$RADDB/mods-enabled/pppgate"

  # Site: sql everywhere, pppgate_simul right after sql in authorize, sql in session.
  local site=$RADDB/sites-available/default
  awk 'BEGIN{done=0} /^\t-sql$/ && !done {print "\tsql"; print "\tpppgate_simul"; done=1; next} {print}' "$site" > "$site.new"
  mv "$site.new" "$site"
  sed -i 's/^\t-sql$/\tsql/; s/^#\tsql$/\tsql/' "$site"
  grep -qP "^\tpppgate_simul$" "$site" || die "pppgate_simul not wired into authorize"

  # checkrad: pppgate (argv[0] "checkrad").
  sed -i "s|^checkrad = .*|checkrad = $LAB_PPPGATE|" "$RADDB/radiusd.conf"
  grep -q "^checkrad = $LAB_PPPGATE$" "$RADDB/radiusd.conf" || die "checkrad not set"

  # The NAS by its NAS-IP-Address, nas_type pppgate (from clients.d, address adapted).
  sed "s/ipaddr = 192.0.2.1/ipaddr = $LNS_IP/" "$repo/clients.d/pppgate-nas.conf" >> "$RADDB/clients.conf"

  mkdir -p /var/run/freeradius /var/log/freeradius
  chown freerad:freerad /var/run/freeradius /var/log/freeradius

  # radiusclient for pppd's radius.so.
  mkdir -p /etc/radiusclient
  cat > /etc/radiusclient/radiusclient.conf << EOF
auth_order radius
login_tries 4
login_timeout 60
nologin /etc/nologin
issue /etc/issue
authserver 127.0.0.1:1812
acctserver 127.0.0.1:1813
servers /etc/radiusclient/servers
dictionary /etc/radiusclient/dictionary
login_radius /usr/sbin/login.radius
seqfile /var/run/radius.seq
mapfile /etc/radiusclient/port-id-map
default_realm
radius_timeout 10
radius_retries 3
login_local /bin/login
EOF
  echo "127.0.0.1 testing123" > /etc/radiusclient/servers
  chmod 600 /etc/radiusclient/servers
  touch /etc/radiusclient/port-id-map
  {
    local a
    for a in "User-Name 1 string" "Password 2 string" "CHAP-Password 3 string" "NAS-IP-Address 4 ipaddr" \
      "NAS-Port-Id 5 integer" "Service-Type 6 integer" "Framed-Protocol 7 integer" "Framed-IP-Address 8 ipaddr" \
      "Framed-IP-Netmask 9 ipaddr" "Framed-Routing 10 integer" "Filter-Id 11 string" "Framed-MTU 12 integer" \
      "Framed-Compression 13 integer" "Reply-Message 18 string" "Framed-Route 22 string" "State 24 string" \
      "Class 25 string" "Session-Timeout 27 integer" "Idle-Timeout 28 integer" "Called-Station-Id 30 string" \
      "Calling-Station-Id 31 string" "NAS-Identifier 32 string" "Acct-Status-Type 40 integer" \
      "Acct-Delay-Time 41 integer" "Acct-Input-Octets 42 integer" "Acct-Output-Octets 43 integer" \
      "Acct-Session-Id 44 string" "Acct-Authentic 45 integer" "Acct-Session-Time 46 integer" \
      "Acct-Input-Packets 47 integer" "Acct-Output-Packets 48 integer" "Acct-Terminate-Cause 49 integer" \
      "Acct-Input-Gigawords 52 integer" "Acct-Output-Gigawords 53 integer" "CHAP-Challenge 60 string" \
      "NAS-Port-Type 61 integer" "Acct-Interim-Interval 85 integer"; do
      set -- $a
      printf 'ATTRIBUTE\t%s\t%s\t%s\n' "$1" "$2" "$3"
    done
    printf 'VALUE\tService-Type\tFramed-User\t2\nVALUE\tFramed-Protocol\tPPP\t1\n'
    printf 'VALUE\tAcct-Status-Type\tStart\t1\nVALUE\tAcct-Status-Type\tStop\t2\nVALUE\tAcct-Status-Type\tAlive\t3\n'
    printf 'VALUE\tAcct-Authentic\tRADIUS\t1\nVALUE\tNAS-Port-Type\tVirtual\t5\n'
    printf 'VALUE\tAcct-Terminate-Cause\tUser-Request\t1\nVALUE\tAcct-Terminate-Cause\tLost-Carrier\t2\n'
    printf 'VALUE\tAcct-Terminate-Cause\tIdle-Timeout\t4\nVALUE\tAcct-Terminate-Cause\tSession-Timeout\t5\n'
    printf 'VALUE\tAcct-Terminate-Cause\tAdmin-Reset\t6\nVALUE\tAcct-Terminate-Cause\tNAS-Error\t9\n'
    printf 'VALUE\tAcct-Terminate-Cause\tNAS-Request\t10\nVALUE\tAcct-Terminate-Cause\tService-Unavailable\t15\n'
  } > /etc/radiusclient/dictionary
  log "FreeRADIUS and radiusclient prepared"
}

fr_ready() { grep -q "Ready to process requests" "$FR_LOG" 2> /dev/null; }

radius_start() {
  : > "$FR_LOG"
  ip netns exec srv freeradius -X > "$FR_LOG" 2>&1 &
  echo $! > "$LAB_TMP/freeradius.pid"
  if ! poll_until 60 fr_ready; then
    tail -40 "$FR_LOG" >&2
    die "FreeRADIUS did not start"
  fi
  log "FreeRADIUS up (pid $(cat "$LAB_TMP/freeradius.pid"))"
}

# radius_user NAME PASSWORD [SIMULTANEOUS_USE]: radcheck rows and the vpn_connections row.
radius_user() {
  sql "insert into radcheck (username, attribute, op, value) values ('$1', 'Cleartext-Password', ':=', '$2')"
  if [ -n "${3:-}" ]; then
    sql "insert into radcheck (username, attribute, op, value) values ('$1', 'Simultaneous-Use', ':=', '$3')"
  fi
  sql "insert into vpn_connections (subaccount_login, status) values ('$1', 'CLAIMED') on conflict do nothing"
}

conn_id() { sql "select id from vpn_connections where subaccount_login = '$1'"; }

# radius_auth USER PASSWORD: prints accept|reject|noanswer (an Access-Request from the LNS's NAS).
radius_auth() {
  local out
  out=$(printf 'User-Name = "%s"\nUser-Password = "%s"\nNAS-IP-Address = %s\nNAS-Port = 0\nService-Type = Framed-User\nFramed-Protocol = PPP\n' "$1" "$2" "$LNS_IP" |
    ip netns exec srv radclient -x -r 1 -t 20 127.0.0.1:1812 auth testing123 2>&1) || true
  case $out in
    *"Received Access-Accept"*) echo accept ;;
    *"Received Access-Reject"*) echo reject ;;
    *) echo noanswer; printf '%s\n' "$out" >&2 ;;
  esac
}

fr_log_mark() { wc -l < "$FR_LOG"; }
fr_log_since() { tail -n +$(( $1 + 1 )) "$FR_LOG"; }

# open_rows USER: open radacct rows of USER on this NAS.
open_rows() { sql "select count(*) from radacct where username = '$1' and acctstoptime is null and nasipaddress = '$LNS_IP'"; }
# open_rows_are USER N: for polling (re-queries on every call).
open_rows_are() { [ "$(open_rows "$1")" = "$2" ]; }
