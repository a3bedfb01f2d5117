# Login-name conformance (issue 16, R513/R514) against the real chain: PAP → pppd (+ radius.so,
# pppgate.so) over real L2TP → FreeRADIUS 3.2 → rlm_sql → PostgreSQL. tests/lab_radius_names.rs
# asserts the facts and prints the list.
#
# Every name goes through `pppgate connection add` first. Refused: exit 65 and one line naming
# the reason — nothing else happens. Accepted: radcheck gets the user under the name `connection
# add --json` says FreeRADIUS stores (`radcheck_username`), Simultaneous-Use := 1, and
#   * every accepted name: an Access-Request with the User-Name pppd would send
#     (`radius_user_name`) is accepted (radcheck found under the predicted name); one radclient
#     run for all of them (each radclient start parses FreeRADIUS's dictionaries: seconds under
#     TCG);
#   * the names in DIAL (all accepted names with NAMES_DIAL=all, the long run; in batches of
#     DIAL_BATCH sessions at once) are dialled over real L2TP: connects and is policed (VALID
#     mapping, address in a policed set); exactly one open radacct row for the address,
#     radius.so's, stored under the predicted name; a collector run binds it and writes the
#     interface's octets into it (no row of pppgate's own); a second login is rejected; the LNS
#     pppds are SIGKILLed; for each name in turn the on-demand janitor closes exactly that row
#     (Lost-Carrier, the collected octets) and no other row changes — the batch's other stale
#     rows included; then the next login of every name is accepted.
# Facts: names.count, names.dialled, names.{setup,add,radius,dial,total}_s; $LAB_OUT/names.tsv
# holds index, hex of the name, outcome (refused|ok|fail), detail.
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/radius.sh"
. "$LAB_REPO/tests/lab/guest/accounting.sh"
lab_init

NAMES=(
  $'c\x20x'
  $'c\x21x'
  $'c\x22x'
  $'c\x23x'
  $'c\x24x'
  $'c\x25x'
  $'c\x26x'
  $'c\x27x'
  $'c\x28x'
  $'c\x29x'
  $'c\x2ax'
  $'c\x2bx'
  $'c\x2cx'
  $'c\x2dx'
  $'c\x2ex'
  $'c\x2fx'
  $'c0x'
  $'c1x'
  $'c2x'
  $'c3x'
  $'c4x'
  $'c5x'
  $'c6x'
  $'c7x'
  $'c8x'
  $'c9x'
  $'c\x3ax'
  $'c\x3bx'
  $'c\x3cx'
  $'c\x3dx'
  $'c\x3ex'
  $'c\x3fx'
  $'c\x40x'
  $'cAx'
  $'cBx'
  $'cCx'
  $'cDx'
  $'cEx'
  $'cFx'
  $'cGx'
  $'cHx'
  $'cIx'
  $'cJx'
  $'cKx'
  $'cLx'
  $'cMx'
  $'cNx'
  $'cOx'
  $'cPx'
  $'cQx'
  $'cRx'
  $'cSx'
  $'cTx'
  $'cUx'
  $'cVx'
  $'cWx'
  $'cXx'
  $'cYx'
  $'cZx'
  $'c\x5bx'
  $'c\x5cx'
  $'c\x5dx'
  $'c\x5ex'
  $'c\x5fx'
  $'c\x60x'
  $'cax'
  $'cbx'
  $'ccx'
  $'cdx'
  $'cex'
  $'cfx'
  $'cgx'
  $'chx'
  $'cix'
  $'cjx'
  $'ckx'
  $'clx'
  $'cmx'
  $'cnx'
  $'cox'
  $'cpx'
  $'cqx'
  $'crx'
  $'csx'
  $'ctx'
  $'cux'
  $'cvx'
  $'cwx'
  $'cxx'
  $'cyx'
  $'czx'
  $'c\x7bx'
  $'c\x7cx'
  $'c\x7dx'
  $'c\x7ex'
  $'o\x27brien'
  $'x\x22y\x22z'
  $'back\x5cslash'
  $'50\x25\x3dhalf'
  $'a\x3db\x3dc'
  $'\x25lX\x25hX'
  $'say\x20\x22hi\x22'
  $'two\x20words'
  $'user\x40example\x2enet'
  $'a\x40b'
  $'a\x40b\x40c\x2enet'
  $'a\x2e\x2eb'
  $'name\x2e'
  $'dial\x2eppp'
  $'j\xc3\xbcrgen'
  $'jM\x2dCM\x2d\x3crgen'
  $'\xd0\x94\xd0\xbc\xd0\xb8\xd1\x82\xd1\x80\xd0\xb8\xd0\xb9'
  $'\xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd'
  $'\xe5\x90\x8d\xe5\x89\x8d'
  $'\xce\x95\xce\xbb\xce\xad\xce\xbd\xce\xb7'
  $'\xc3\xa0\x2dla'
  $'Zo\xc3\xab\xc2\xae'
  $'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn'
  $'LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL'
  $'\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9'
  $'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
  $'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
)
DIAL=(
  $'o\x27brien'
  $'x\x22y\x22z'
  $'back\x5cslash'
  $'50\x25\x3dhalf'
  $'j\xc3\xbcrgen'
  $'\xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd'
  $'\xe5\x90\x8d\xe5\x89\x8d'
  $'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn'
  $'LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL'
)

T0=$(date +%s)
pg_start
pppgate_configure
pppgate_migrate
net_setup
acct_quiet_links
radius_prepare
radius_start
LNS_PLUGIN=0
LNS_PPPD_EXTRA="plugin radius.so plugin $LAB_PLUGIN pppgate-config $PPPGATE_CONF"
lns_start
fact names.setup_s "$(( $(date +%s) - T0 ))"
DIAL_BATCH=${DIAL_BATCH:-10}

pg_srv() { ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" "$@"; }
# od -v: without it od prints a repeated line as '*' (the 250-byte names).
hex() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }
# sqlv SQL NAME=VALUE...: SQL with psql variables (any bytes, quoted by psql as :'NAME').
sqlv() {
  local q=$1 args=()
  shift
  local kv
  for kv in "$@"; do args+=(-v "$kv"); done
  printf '%s\n' "$q" | psql_as "$PG_DB" -q -At "${args[@]}"
}
# radclient's string syntax: backslash and double quote escaped.
rquote() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }
# pppd's option syntax: the same escapes inside double quotes.
pquote() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }

# radius_batch I...: one radclient run, one Access-Request per name NAMES[I] (User-Name as pppd
# sends it, UNAME[I]; NAS-Port = I), one at a time. Sets VERDICT[I] to accept|reject|noanswer.
declare -A UNAME STORED VERDICT RES
radius_batch() {
  local f=$LAB_TMP/radclient.in i first=1 line id=x port=
  local -A port_of=()
  : > "$f"
  for i in "$@"; do
    [ "$first" = 1 ] || echo >> "$f"
    first=0
    printf 'User-Name = %s\nUser-Password = "pw"\nNAS-IP-Address = %s\nNAS-Port = %s\nService-Type = Framed-User\nFramed-Protocol = PPP\n' \
      "$(rquote "${UNAME[$i]}")" "$LNS_IP" "$i" >> "$f"
    VERDICT[$i]=noanswer
  done
  ip netns exec srv radclient -x -p 1 -r 1 -t 30 -f "$f" 127.0.0.1:1812 auth testing123 > "$LAB_TMP/radclient.out" 2>&1 || true
  cat "$LAB_TMP/radclient.out" >> "$LAB_OUT/radclient.log"
  # Sent Access-Request Id N … / <TAB>NAS-Port = I / Received Access-Accept Id N …
  while IFS= read -r line; do
    case $line in
      "Sent Access-Request Id "*) read -r _ _ _ id _ <<< "$line"; port=want ;;
      $'\tNAS-Port = '*) [ "$port" != want ] || { port_of[$id]=${line##* }; port=; } ;;
      "Received Access-Accept Id "*) read -r _ _ _ id _ <<< "$line"; [ -z "${port_of[$id]:-}" ] || VERDICT[${port_of[$id]}]=accept ;;
      "Received Access-Reject Id "*) read -r _ _ _ id _ <<< "$line"; [ -z "${port_of[$id]:-}" ] || VERDICT[${port_of[$id]}]=reject ;;
    esac
  done < "$LAB_TMP/radclient.out"
}
others_digest() {
  sqlv "select md5(coalesce(string_agg(radacctid || ':' || coalesce(acctstoptime::text, 'open') || ':' ||
          coalesce(acctinputoctets, -1) || ':' || coalesce(acctoutputoctets, -1), ',' order by radacctid), ''))
        from radacct where radacctid <> :'r'" "r=$1"
}
in_dial() {
  local d
  [ "${NAMES_DIAL:-}" = all ] && return 0
  for d in "${DIAL[@]}"; do [ "$d" = "$1" ] && return 0; done
  return 1
}
# bad I WHAT: the first failure of name I.
bad() { [ -n "${RES[$1]:-}" ] || RES[$1]="fail:$2"; }
live() { [ -z "${RES[$1]:-}" ]; }

# dial_batch I...: the full check over real L2TP for the names NAMES[I], all dialled at once.
# Sets RES[I] to "ok" or "fail:<what>".
dial_batch() {
  local i c moved n k row got digest
  local -A ip=() pid=() ifn=() rowid=() want=() before=() after=() validity=()
  for i in "$@"; do client_add "n$i" "$(pquote "${NAMES[$i]}")" pw; done
  for i in "$@"; do client_connect "n$i"; done
  for i in "$@"; do
    c=n$i
    if ! poll_until 120 client_is_up "$c"; then bad "$i" no-connect; continue; fi
    ip[$i]=$(client_get "$c" client_ip)
    pid[$i]=$(client_get "$c" lns_pid)
    ifn[$i]=$(client_get "$c" lns_if)
  done
  pg_srv --json session list > "$LAB_TMP/sessions.json"
  while read -r k c; do validity[$k]=$c; done < <(jq -r '.sessions[] | "\(.ppp_if) \(.validity)"' "$LAB_TMP/sessions.json")
  for i in "$@"; do
    live "$i" || continue
    [ "${validity[${ifn[$i]}]:-none}" = valid ] || { bad "$i" "mapping-${validity[${ifn[$i]}]:-none}"; continue; }
    poll_until 10 nft_member full_v4 "${ip[$i]}" "${ifn[$i]}" || { bad "$i" not-in-full_v4; continue; }
    poll_until 20 sql_is 1 "select count(*) from radacct where framedipaddress = '${ip[$i]}' and acctstoptime is null" ||
      { bad "$i" "rows-for-address=$(sql "select count(*) from radacct where framedipaddress = '${ip[$i]}' and acctstoptime is null")"; continue; }
    rowid[$i]=$(sql "select radacctid from radacct where framedipaddress = '${ip[$i]}' and acctstoptime is null")
    n=$(sqlv "select count(*) from radacct where radacctid = :'r' and username = :'u'" "r=${rowid[$i]}" "u=${STORED[$i]}")
    [ "$n" = 1 ] || { bad "$i" "stored-as=$(sql "select username from radacct where radacctid = ${rowid[$i]}")"; continue; }
    ip netns exec cli ping -q -c 5 -i 0.05 -s 600 -W 2 -I "$(client_get "n$i" lac_if)" "$PPP_LOCAL" > /dev/null 2>&1 || true
  done
  # One collector run while every interface is quiet (read before and after; again if one moved).
  for k in 1 2 3 4; do
    for i in "$@"; do if live "$i"; then settle "${ifn[$i]}"; fi; done
    for i in "$@"; do if live "$i"; then before[$i]=$(counters_now "${ifn[$i]}"); fi; done
    run_collector "batch$1-$k"
    moved=0
    for i in "$@"; do
      if live "$i" && [ "$(counters_now "${ifn[$i]}")" != "${before[$i]}" ]; then moved=1; fi
    done
    if [ "$moved" = 0 ]; then break; fi
    log "counters moved around the collector run; again"
  done
  [ "$COLLECT_RC" = 0 ] || for i in "$@"; do bad "$i" "collector-exit=$COLLECT_RC"; done
  for i in "$@"; do
    live "$i" || continue
    local base_rx base_tx rx tx
    base_rx=$(sed -n 's/^RX_BASE=//p' "/run/vpn-sessions/${ifn[$i]}.env")
    base_tx=$(sed -n 's/^TX_BASE=//p' "/run/vpn-sessions/${ifn[$i]}.env")
    read -r rx tx <<< "${before[$i]}"
    want[$i]="$(( rx - ${base_rx:-0} )) $(( tx - ${base_tx:-0} ))"
    got=$(sql "select acctinputoctets || ' ' || acctoutputoctets from radacct where radacctid = ${rowid[$i]}")
    [ "$got" = "${want[$i]}" ] || { bad "$i" "octets=$got/want=${want[$i]}"; continue; }
    [ "$(sql "select radacct_owner || ':' || radacct_id from pppgate_sessions where stop_time is null and client_ip = '${ip[$i]}'")" = "radius:${rowid[$i]}" ] ||
      { bad "$i" binding; continue; }
  done
  [ "$(sql "select count(*) from radacct where acctuniqueid like 'pppgate:%'")" = 0 ] || for i in "$@"; do bad "$i" own-row; done
  # A second login of every name while the first is live: rejected.
  local up=()
  for i in "$@"; do if live "$i"; then up+=("$i"); fi; done
  if [ "${#up[@]}" -gt 0 ]; then
    echo "=== batch $1: second logins" >> "$LAB_OUT/radclient.log"
    radius_batch "${up[@]}"
    for i in "${up[@]}"; do [ "${VERDICT[$i]}" = reject ] || bad "$i" "second-login-${VERDICT[$i]}"; done
  fi
  # SIGKILL every LNS pppd; the rows stay open (radius.so sends no Stop).
  for i in "$@"; do [ -z "${pid[$i]:-}" ] || kill -KILL "${pid[$i]}" 2> /dev/null || true; done
  for i in "$@"; do [ -z "${pid[$i]:-}" ] || wait_for 10 "pppd ${pid[$i]} to die" pid_gone "${pid[$i]}"; done
  for i in "$@"; do
    live "$i" || continue
    wait_for 30 "the row to pass the janitor's grace" \
      sql_is t "select (now() - acctstarttime) > interval '11 seconds' from radacct where radacctid = ${rowid[$i]}"
  done
  # The on-demand janitor per name: exactly that row, with the collected octets; nothing else.
  for i in "$@"; do
    live "$i" || continue
    digest=$(others_digest "${rowid[$i]}")
    pg_srv --json janitor --subaccount-login="${NAMES[$i]}" > "$LAB_OUT/janitor-$i.json" 2> "$LAB_OUT/janitor-$i.err" || { bad "$i" janitor-exit; continue; }
    got=$(sql "select coalesce(acctterminatecause, 'open') || ' ' || acctinputoctets || ' ' || acctoutputoctets from radacct where radacctid = ${rowid[$i]}")
    [ "$got" = "Lost-Carrier ${want[$i]}" ] || { bad "$i" "closed-as=$got"; continue; }
    [ "$(others_digest "${rowid[$i]}")" = "$digest" ] || { bad "$i" other-rows-changed; continue; }
  done
  # The next login of every name: accepted.
  up=()
  for i in "$@"; do if live "$i"; then up+=("$i"); fi; done
  if [ "${#up[@]}" -gt 0 ]; then
    echo "=== batch $1: next logins" >> "$LAB_OUT/radclient.log"
    radius_batch "${up[@]}"
    for i in "${up[@]}"; do [ "${VERDICT[$i]}" = accept ] || bad "$i" "next-login-${VERDICT[$i]}"; done
  fi
  for i in "$@"; do if live "$i"; then RES[$i]=ok; fi; done
  clients_reset > /dev/null 2>&1 || true
}

case_names() {
  local i rc t out accepted=() dial=() k lines detail outcome last
  local -A detail_of=()
  : > "$LAB_OUT/names.tsv"
  : > "$LAB_OUT/radclient.log"
  fact names.count "${#NAMES[@]}"
  # 1. connection add, every name.
  t=$(date +%s)
  : > "$LAB_TMP/adds.json"
  for i in "${!NAMES[@]}"; do
    rc=0
    out=$("$LAB_PPPGATE" -c "$PPPGATE_CONF" --json connection add --login="${NAMES[$i]}" 2> "$LAB_TMP/add.err") || rc=$?
    if [ "$rc" != 0 ]; then
      mapfile -t lines < <(grep . "$LAB_TMP/add.err" || true)
      last=
      [ "${#lines[@]}" = 0 ] || last=${lines[-1]}
      detail_of[$i]="refused"$'\t'"exit=$rc lines=${#lines[@]} $last"
    else
      printf '%s\n' "$out" >> "$LAB_TMP/adds.json"
      accepted+=("$i")
    fi
  done
  mapfile -t lines < <(jq -r .radcheck_username "$LAB_TMP/adds.json")
  [ "${#lines[@]}" = "${#accepted[@]}" ] || die "connection add printed ${#lines[@]} names for ${#accepted[@]} logins"
  for k in "${!accepted[@]}"; do STORED[${accepted[$k]}]=${lines[$k]}; done
  mapfile -t lines < <(jq -r .radius_user_name "$LAB_TMP/adds.json")
  for k in "${!accepted[@]}"; do UNAME[${accepted[$k]}]=${lines[$k]}; done
  fact names.add_s "$(( $(date +%s) - t ))"
  # 2. radcheck under the predicted name, Simultaneous-Use := 1; one Access-Request per name.
  t=$(date +%s)
  for i in "${accepted[@]}"; do
    printf "insert into radcheck (username, attribute, op, value) values ('%s', 'Cleartext-Password', ':=', 'pw'), ('%s', 'Simultaneous-Use', ':=', '1');\n" \
      "${STORED[$i]//\'/\'\'}" "${STORED[$i]//\'/\'\'}"
  done > "$LAB_TMP/radcheck.sql"
  psql_as "$PG_DB" -q -f "$LAB_TMP/radcheck.sql" > /dev/null || die "radcheck inserts failed"
  echo "=== every accepted name" >> "$LAB_OUT/radclient.log"
  radius_batch "${accepted[@]}"
  for i in "${accepted[@]}"; do
    if [ "${VERDICT[$i]}" != accept ]; then
      RES[$i]="fail:radius-${VERDICT[$i]}-stored-as=${STORED[$i]}"
    elif in_dial "${NAMES[$i]}"; then
      dial+=("$i")
    fi
  done
  fact names.radius_s "$(( $(date +%s) - t ))"
  # 3. Dial, DIAL_BATCH sessions at a time.
  t=$(date +%s)
  for (( k = 0; k < ${#dial[@]}; k += DIAL_BATCH )); do
    dial_batch "${dial[@]:k:DIAL_BATCH}"
  done
  fact names.dial_s "$(( $(date +%s) - t ))"
  fact names.dialled "${#dial[@]}"
  # The list.
  for i in "${!NAMES[@]}"; do
    if [ -n "${detail_of[$i]:-}" ]; then
      outcome=${detail_of[$i]%%$'\t'*} detail=${detail_of[$i]#*$'\t'}
    elif [[ ${RES[$i]:-} == fail:* ]]; then
      outcome=fail detail="${RES[$i]} stored=${STORED[$i]}"
    elif [ -n "${RES[$i]:-}" ]; then
      outcome=ok detail="dialled ${RES[$i]} stored=${STORED[$i]}"
    else
      outcome=ok detail="radius-only stored=${STORED[$i]}"
    fi
    printf '%s\t%s\t%s\t%s\n' "$i" "$(hex "${NAMES[$i]}")" "$outcome" "${detail//$'\t'/ }" >> "$LAB_OUT/names.tsv"
  done
  fact names.total_s "$(( $(date +%s) - T0 ))"
}

run_case names case_names
cp "$FR_LOG" "$LAB_OUT/logs/" 2> /dev/null || true
