# Login-name conformance (issue 16, R513/R514) against the real chain: PAP → pppd (+ radius.so,
# pppgate.so) over real L2TP → FreeRADIUS 3.2 → rlm_sql → PostgreSQL. tests/lab_radius_names.rs
# asserts the facts and prints the list.
#
# Every name goes through `pppgate connection add` first. Refused: exit 65 and one line naming
# the reason — nothing else happens. Accepted: radcheck gets the user under the name `connection
# add --json` says FreeRADIUS stores (`radcheck_username`), Simultaneous-Use := 1, and
#   * every accepted name: an Access-Request with the User-Name pppd would send
#     (`radius_user_name`) is accepted (radcheck found under the predicted name);
#   * the names in DIAL (all accepted names with NAMES_DIAL=all, the long run) are dialled over
#     real L2TP: connects and is policed (VALID mapping, address in a policed set); exactly one
#     open radacct row for the address, radius.so's, stored under the predicted name; a collector
#     run binds it and writes the interface's octets into it; a second login is rejected; the LNS
#     pppd is SIGKILLed; the on-demand janitor closes exactly that row with the collected octets;
#     the next login is accepted; no other row changed.
# Facts: names.count, name.<i>.outcome (refused|ok|fail), name.<i>.detail, name.<i>.dialled,
# durations; $LAB_OUT/names.tsv holds index, hex of the name, outcome, detail.
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

pg_srv() { ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" "$@"; }
hex() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }
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
auth_as() {
  local out
  out=$(printf 'User-Name = %s\nUser-Password = "pw"\nNAS-IP-Address = %s\nNAS-Port = 0\nService-Type = Framed-User\nFramed-Protocol = PPP\n' \
    "$(rquote "$1")" "$LNS_IP" | ip netns exec srv radclient -x -r 1 -t 20 127.0.0.1:1812 auth testing123 2>&1) || true
  case $out in
    *"Received Access-Accept"*) echo accept ;;
    *"Received Access-Reject"*) echo reject ;;
    *) echo noanswer ;;
  esac
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

# dial I NAME STORED: the full check over real L2TP; prints "ok" or "fail:<what>".
dial() {
  local i=$1 name=$2 stored=$3 c="n$1" ip pid ifname row n base_rx base_tx rx tx digest
  client_add "$c" "$(pquote "$name")" pw
  client_connect "$c"
  if ! client_wait_up "$c" 60 2> /dev/null; then echo "fail:no-connect"; return; fi
  ip=$(client_get "$c" client_ip)
  pid=$(client_get "$c" lns_pid)
  ifname=$(client_get "$c" lns_if)
  [ "$(pg_srv --json session list | jq -r --arg i "$ifname" '.sessions[] | select(.ppp_if == $i) | .validity')" = valid ] ||
    { echo "fail:mapping-not-valid"; return; }
  poll_until 10 nft_member full_v4 "$ip" "$ifname" || { echo "fail:not-in-full_v4"; return; }
  poll_until 10 sql_is 1 "select count(*) from radacct where framedipaddress = '$ip' and acctstoptime is null" ||
    { echo "fail:rows-for-address=$(sql "select count(*) from radacct where framedipaddress = '$ip' and acctstoptime is null")"; return; }
  row=$(sql "select radacctid from radacct where framedipaddress = '$ip' and acctstoptime is null")
  n=$(sqlv "select count(*) from radacct where radacctid = :'r' and username = :'u'" "r=$row" "u=$stored")
  [ "$n" = 1 ] || { echo "fail:stored-as=$(sql "select username from radacct where radacctid = $row")"; return; }
  ip netns exec cli ping -q -c 5 -i 0.05 -s 600 -W 2 "$PPP_LOCAL" > /dev/null 2>&1 || true
  measure_quiet "name$i" "$ifname"
  base_rx=$(sed -n 's/^RX_BASE=//p' "/run/vpn-sessions/$ifname.env")
  base_tx=$(sed -n 's/^TX_BASE=//p' "/run/vpn-sessions/$ifname.env")
  read -r rx tx <<< "$MEASURE_BEFORE"
  local want="$(( rx - ${base_rx:-0} )) $(( tx - ${base_tx:-0} ))"
  local got
  got=$(sql "select acctinputoctets || ' ' || acctoutputoctets from radacct where radacctid = $row")
  [ "$got" = "$want" ] || { echo "fail:octets=$got/want=$want"; return; }
  [ "$(sql "select radacct_owner || ':' || radacct_id from pppgate_sessions where stop_time is null and client_ip = '$ip'")" = "radius:$row" ] ||
    { echo "fail:binding"; return; }
  [ "$(sql "select count(*) from radacct where acctuniqueid like 'pppgate:%'")" = 0 ] || { echo "fail:own-row"; return; }
  [ "$(auth_as "$USER_NAME")" = reject ] || { echo "fail:second-login-accepted"; return; }
  digest=$(others_digest "$row")
  kill -KILL "$pid"
  wait_for 10 "pppd $pid to die" pid_gone "$pid"
  wait_for 30 "the row to pass the janitor's grace" \
    sql_is t "select (now() - acctstarttime) > interval '11 seconds' from radacct where radacctid = $row"
  pg_srv --json janitor --subaccount-login="$name" > "$LAB_OUT/janitor-$i.json" 2> /dev/null || { echo "fail:janitor-exit"; return; }
  got=$(sql "select coalesce(acctterminatecause, 'open') || ' ' || acctinputoctets || ' ' || acctoutputoctets from radacct where radacctid = $row")
  [ "$got" = "Lost-Carrier $want" ] || { echo "fail:closed-as=$got"; return; }
  [ "$(others_digest "$row")" = "$digest" ] || { echo "fail:other-rows-changed"; return; }
  [ "$(auth_as "$USER_NAME")" = accept ] || { echo "fail:next-login-rejected"; return; }
  clients_reset > /dev/null 2>&1
  echo ok
}

case_names() {
  local i name out rc err stored user_name outcome detail t
  : > "$LAB_OUT/names.tsv"
  fact names.count "${#NAMES[@]}"
  for i in "${!NAMES[@]}"; do
    name=${NAMES[$i]}
    t=$(date +%s)
    rc=0
    out=$("$LAB_PPPGATE" -c "$PPPGATE_CONF" --json connection add --login="$name" 2> "$LAB_TMP/add.err") || rc=$?
    err=$(cat "$LAB_TMP/add.err")
    if [ "$rc" != 0 ]; then
      outcome=refused
      detail="exit=$rc lines=$(printf '%s\n' "$err" | grep -c .) $(printf '%s' "$err" | tail -1)"
    else
      stored=$(jq -r .radcheck_username <<< "$out")
      USER_NAME=$(jq -r .radius_user_name <<< "$out")
      sqlv "insert into radcheck (username, attribute, op, value) values (:'u', 'Cleartext-Password', ':=', 'pw'), (:'u', 'Simultaneous-Use', ':=', '1')" "u=$stored"
      if [ "$(auth_as "$USER_NAME")" != accept ]; then
        outcome=fail detail="radcheck-not-found-as=$stored"
      elif in_dial "$name"; then
        detail=$(dial "$i" "$name" "$stored" | tail -1)
        clients_reset > /dev/null 2>&1 || true
        fact "name.$i.dialled" yes
        if [ "$detail" = ok ]; then outcome=ok; else outcome=fail; fi
        detail="dialled $detail stored=$stored"
      else
        outcome=ok detail="radius-only stored=$stored"
      fi
    fi
    fact "name.$i.outcome" "$outcome"
    fact "name.$i.detail" "$(printf '%s' "$detail" | tr '\n\t' '  ' | cut -c1-300)"
    fact "name.$i.seconds" "$(( $(date +%s) - t ))"
    printf '%s\t%s\t%s\t%s\n' "$i" "$(hex "$name")" "$outcome" "$detail" >> "$LAB_OUT/names.tsv"
  done
  fact names.total_s "$(( $(date +%s) - T0 ))"
}

run_case names case_names
cp "$FR_LOG" "$LAB_OUT/logs/" 2> /dev/null || true
