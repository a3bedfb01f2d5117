# shellcheck shell=bash
# L2TP over IPsec for lab scenarios, on top of lib.sh: strongSwan's charon (charon-systemd, the
# daemon Debian's strongswan.service runs, configured with swanctl) on the LNS in srv and on the
# client side in cli, IKEv1 transport mode protecting UDP 1701 — what operators run for
# Windows/macOS/iOS/Android L2TP/IPsec clients. Two variants: a pre-shared key, and X.509
# certificates (ECDSA P-256, a lab CA made with strongSwan's pki). The LNS only accepts L2TP that
# arrived inside ESP: an nft table (not pppgate's) drops UDP 1701 without an IPsec secpath.
#
# Each daemon gets its own strongswan.conf (STRONGSWAN_CONF) with its own vici socket and log, so
# the two share nothing but the binaries.
#
#   ipsec_setup psk|cert CLIENT_ADDR   config for both sides (the client dials from CLIENT_ADDR)
#   ipsec_start                        both charons, connections loaded
#   ipsec_up                           the client initiates; waits for the ESP SAs on both sides
#   ipsec_protect_l2tp                 srv drops UDP 1701 that did not arrive over IPsec
#   ipsec_sas SIDE                     prints the installed ESP SAs (ip xfrm state) of SIDE
#   ipsec_stop                         both charons

IPSEC_DIR=$LAB_TMP/ipsec

ipsec_conf() {
  local side=$1
  cat > "$IPSEC_DIR/$side/strongswan.conf" <<EOF
# written by the lab (tests/lab/guest/ipsec.sh), side $side
charon-systemd {
  journal { default = -1 }
}
charon {
  # Only what IKEv1 with PSK or ECDSA certificates needs: the packaged set (~60 plugins, with
  # test-vectors' self tests) takes minutes to start under TCG.
  load_modular = no
  load = random nonce openssl pem pkcs1 pkcs8 x509 pubkey constraints revocation sha1 sha2 hmac aes kernel-netlink socket-default vici updown
  install_routes = no
  plugins {
    vici { socket = unix://$IPSEC_DIR/$side/charon.vici }
  }
  filelog {
    lab {
      path = $IPSEC_DIR/$side/charon.log
      time_format = %T
      default = 1
      ike = 2
      knl = 1
    }
  }
}
EOF
}

# ipsec_child SIDE: the CHILD_SA both sides agree on: transport mode, L2TP's UDP port only.
ipsec_setup() {
  local mode=$1 caddr=$2 side
  IPSEC_MODE=$mode
  IPSEC_CLIENT=$caddr
  rm -rf "$IPSEC_DIR"
  for side in lns cli; do
    mkdir -p "$IPSEC_DIR/$side"
    ipsec_conf "$side"
  done
  local lauth rauth lsec csec
  if [ "$mode" = psk ]; then
    lauth="auth = psk
      id = $LNS_IP"
    rauth="auth = psk"
    lsec="ike-lab { secret = \"lab-l2tp-psk-0123456789\" }"
    csec=$lsec
  else
    local d=$IPSEC_DIR/pki
    mkdir -p "$d"
    {
      pki --gen --type ecdsa --size 256 --outform pem > "$d/ca.key" &&
        pki --self --ca --lifetime 30 --in "$d/ca.key" --type ecdsa --dn "CN=pppgate lab CA" --outform pem > "$d/ca.pem" &&
        pki --gen --type ecdsa --size 256 --outform pem > "$d/lns.key" &&
        pki --pub --in "$d/lns.key" --type ecdsa | pki --issue --lifetime 30 --cacert "$d/ca.pem" --cakey "$d/ca.key" \
          --dn "CN=lns.lab" --san lns.lab --san "$LNS_IP" --flag serverAuth --outform pem > "$d/lns.pem" &&
        pki --gen --type ecdsa --size 256 --outform pem > "$d/cli.key" &&
        pki --pub --in "$d/cli.key" --type ecdsa | pki --issue --lifetime 30 --cacert "$d/ca.pem" --cakey "$d/ca.key" \
          --dn "CN=client.lab" --san client.lab --flag clientAuth --outform pem > "$d/cli.pem" &&
        [ -s "$d/cli.pem" ]
    } 2> "$d/pki.log" || die "pki could not make the lab's certificates: $(cat "$d/pki.log")"
    # swanctl loads keys and certificates from the directories next to the swanctl.conf it reads
    # (ecdsa/, x509/, x509ca/); `secrets` would only hold passphrases for them.
    for side in lns cli; do
      mkdir -p "$IPSEC_DIR/$side/ecdsa" "$IPSEC_DIR/$side/x509" "$IPSEC_DIR/$side/x509ca"
      cp "$d/$side.key" "$IPSEC_DIR/$side/ecdsa/"
      cp "$d/$side.pem" "$IPSEC_DIR/$side/x509/"
      cp "$d/ca.pem" "$IPSEC_DIR/$side/x509ca/"
    done
    lauth="auth = pubkey
      certs = lns.pem
      id = lns.lab"
    rauth="auth = pubkey
      cacerts = ca.pem"
    lsec=
    csec=
  fi
  cat > "$IPSEC_DIR/lns/swanctl.conf" <<EOF
# LNS: any client, IKEv1, transport mode for L2TP (UDP 1701) only.
connections {
  l2tp-$mode {
    version = 1
    local_addrs = $LNS_IP
    remote_addrs = %any
    proposals = aes128-sha256-modp2048, aes256-sha1-modp1024, default
    local {
      $lauth
    }
    remote {
      $rauth
    }
    children {
      l2tp {
        mode = transport
        local_ts = dynamic[udp/1701]
        remote_ts = dynamic[udp]
        esp_proposals = aes128-sha256, aes256-sha1, default
      }
    }
  }
}
secrets {
  $lsec
}
EOF
  local cli_local cli_remote
  if [ "$mode" = psk ]; then
    cli_local="auth = psk"
    cli_remote="auth = psk
      id = $LNS_IP"
  else
    cli_local="auth = pubkey
      certs = cli.pem
      id = client.lab"
    cli_remote="auth = pubkey
      id = lns.lab
      cacerts = ca.pem"
  fi
  cat > "$IPSEC_DIR/cli/swanctl.conf" <<EOF
# Client: IKEv1 transport mode to the LNS for its L2TP port, as an L2TP/IPsec client does.
connections {
  l2tp {
    version = 1
    local_addrs = $caddr
    remote_addrs = $LNS_IP
    proposals = aes128-sha256-modp2048
    local {
      $cli_local
    }
    remote {
      $cli_remote
    }
    children {
      l2tp {
        mode = transport
        local_ts = dynamic[udp/1701]
        remote_ts = dynamic[udp/1701]
        esp_proposals = aes128-sha256
      }
    }
  }
}
secrets {
  $csec
}
EOF
  log "IPsec ($mode) configured: LNS $LNS_IP, client $caddr"
}

ipsec_ns() { [ "$1" = lns ] && echo srv || echo cli; }

ipsec_vici_ready() { [ -S "$IPSEC_DIR/$1/charon.vici" ]; }

ipsec_start() {
  local side
  for side in lns cli; do
    STRONGSWAN_CONF=$IPSEC_DIR/$side/strongswan.conf ip netns exec "$(ipsec_ns "$side")" /usr/sbin/charon-systemd \
      > "$IPSEC_DIR/$side/stdout.log" 2>&1 &
    echo $! > "$IPSEC_DIR/$side/pid"
  done
  for side in lns cli; do
    poll_until 120 ipsec_vici_ready "$side" ||
      die "charon ($side) opened no vici socket in 120 s: $(tail -20 "$IPSEC_DIR/$side/stdout.log" "$IPSEC_DIR/$side/charon.log" 2>&1)"
    ip netns exec "$(ipsec_ns "$side")" swanctl --load-all --noprompt --uri "unix://$IPSEC_DIR/$side/charon.vici" \
      --file "$IPSEC_DIR/$side/swanctl.conf" > "$IPSEC_DIR/$side/load.log" 2>&1 ||
      die "swanctl --load-all ($side) failed: $(cat "$IPSEC_DIR/$side/load.log")"
  done
  log "charon up on both sides ($IPSEC_MODE)"
}

ipsec_sas() { ip -n "$(ipsec_ns "$1")" xfrm state | grep -c '^src'; }

ipsec_has_sas() { [ "$(ipsec_sas lns)" -ge 2 ] && [ "$(ipsec_sas cli)" -ge 2 ]; }

ipsec_up() {
  local t0
  now
  t0=$NOW
  ip netns exec cli swanctl --initiate --child l2tp --timeout 60 --uri "unix://$IPSEC_DIR/cli/charon.vici" \
    > "$IPSEC_DIR/cli/initiate.log" 2>&1 || die "IKE failed: $(tail -20 "$IPSEC_DIR/cli/initiate.log")"
  wait_for 20 "ESP SAs on both sides" ipsec_has_sas
  now
  IPSEC_UP_MS=$((NOW - t0))
  log "IPsec ($IPSEC_MODE) up in $IPSEC_UP_MS ms"
}

# UDP 1701 reaches srv's xl2tpd only from inside ESP (what operators configure so that plain L2TP,
# with its cleartext PAP/CHAP, is never accepted). A table of its own: pppgate owns inet pppgate.
ipsec_protect_l2tp() {
  ip netns exec srv nft -f - <<EOF || die "cannot load the L2TP-over-IPsec-only rule"
table inet l2tp_ipsec {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport 1701 meta ipsec missing counter drop comment "l2tp_without_ipsec"
  }
}
EOF
}

# ipsec_l2tp_plain_drops: datagrams to UDP 1701 dropped for arriving without IPsec.
ipsec_l2tp_plain_drops() {
  ip netns exec srv nft list chain inet l2tp_ipsec input | sed -n 's/.*counter packets \([0-9]*\).*/\1/p'
}

ipsec_stop() {
  local side
  for side in lns cli; do
    readf "$IPSEC_DIR/$side/pid" && kill -TERM "$V" 2> /dev/null || true
  done
  cp -r "$IPSEC_DIR" "$LAB_OUT/logs/ipsec-$IPSEC_MODE" 2> /dev/null || true
}
