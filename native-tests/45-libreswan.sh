#!/usr/bin/env bash
# Libreswan: two pluto instances, each in a network namespace of its own joined by a veth pair,
# bring up an IKEv2 host-to-host tunnel. The left side authenticates with an RSA key on the token
# (its NSS database has the PKCS#11 module added; certificate "p11proxy-ipsec:ipsec-left"; the PIN
# in pluto's nsspassword file), the right side with a key in its own NSS database. Both check the
# other's certificate against the test CA. Shown: both plutos report the IKE SA and the IPsec SA
# established, `ip xfrm state` holds the ESP SAs in both namespaces, and a ping between the two
# addresses crosses them (the SAs' packet counters grow by what was sent). A kernel without ESP
# (xfrm but no esp4, as on some VMs) gets as far as IKE_AUTH with both peers authenticated and the
# Child SA negotiated, which the kernel then refuses; the test checks exactly that there.
#   direct  left's NSS database loads SoftHSM itself (the reference)
#   broker  left's NSS database loads out/p11proxy.so; a p11proxy-broker serves the token
# Fixed addresses inside the test's own namespaces (192.0.2.1, .2: documentation range).
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
PLUTO=/usr/libexec/ipsec/pluto
ADDCONN=/usr/libexec/ipsec/addconn
[ -x "$PLUTO" ] || fail "no $PLUTO (package libreswan; ./build.sh installs it)"
[ "$(id -u)" -eq 0 ] || fail "needs root: it creates network namespaces"
LEFT_IP=192.0.2.1
RIGHT_IP=192.0.2.2

fixture_clients_token ipsec
fixture_start_broker --verbose
BROKER_ADDRESS=$FIXTURE_ADDRESS
d=$FIXTURE_DIR

# Certificates for IKE: left's key on the token, right's in a file; both from the test CA.
ipsec_ext() {
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth,1.3.6.1.5.5.7.3.17\nsubjectAltName=IP:%s\n' "$1"
}
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/ipsec-left-key.pem" 2>/dev/null || fail "no left key"
fixture_clients_cert ipsec-left "$d/ipsec-left-key.pem" "p11proxy ipsec left" "$(ipsec_ext $LEFT_IP)"
softhsm2-util --import "$d/ipsec-left-key.pem" --token "$FIXTURE_LABEL" --label ipsec-left --id 05 --pin "$FIXTURE_PIN" >/dev/null \
  || fail "cannot import the left key"
pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$FIXTURE_LABEL" --login --pin "$FIXTURE_PIN" \
  --write-object "$d/ipsec-left.der" --type cert --id 05 --label ipsec-left >/dev/null 2>&1 || fail "cannot store the left certificate"
rm -f "$d/ipsec-left-key.pem"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/ipsec-right-key.pem" 2>/dev/null || fail "no right key"
fixture_clients_cert ipsec-right "$d/ipsec-right-key.pem" "p11proxy ipsec right" "$(ipsec_ext $RIGHT_IP)"
openssl pkcs12 -export -inkey "$d/ipsec-right-key.pem" -in "$d/ipsec-right.pem" -name ipsec-right -passout pass: \
  -out "$d/ipsec-right.p12" 2>/dev/null || fail "cannot make right's PKCS#12"

# Two namespaces joined by a veth pair.
LEFT=p11l$$
RIGHT=p11r$$
fixture_netns_pair "$LEFT" "$RIGHT"
ip -n "$LEFT" addr add "$LEFT_IP/24" dev "$LEFT" || fail "cannot address $LEFT"
ip -n "$RIGHT" addr add "$RIGHT_IP/24" dev "$RIGHT" || fail "cannot address $RIGHT"
ip netns exec "$LEFT" ping -c 1 -W 5 "$RIGHT_IP" >/dev/null || fail "the namespaces cannot reach each other"

LEFT_ID="O=p11proxy tests, CN=p11proxy ipsec left"
RIGHT_ID="O=p11proxy tests, CN=p11proxy ipsec right"

# side_dir NAME MODE: pluto's files for one side (NSS database, configuration, run directory).
setup_side() {
  local side=$1 mode=$2 dir="$d/$1-$2" cert
  mkdir -p "$dir/run"
  certutil -N -d "sql:$dir" --empty-password || fail "$side: certutil -N failed"
  certutil -A -d "sql:$dir" -n "p11proxy test CA" -t "CT,," -i "$d/ca.pem" || fail "$side: cannot trust the test CA"
  if [ "$side" = left ]; then
    local library=$MODULE
    [ "$mode" = direct ] && library=$SOFTHSM_MODULE
    P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS modutil -dbdir "sql:$dir" -add token -libfile "$library" -force </dev/null >"$dir/modutil.out" 2>&1 \
      || fail "$side $mode: modutil -add $library failed: $(cat "$dir/modutil.out")"
    printf '%s:%s\n' "$FIXTURE_LABEL" "$FIXTURE_PIN" > "$dir/nsspassword"
    cert="$FIXTURE_LABEL:ipsec-left"
  else
    pk12util -i "$d/ipsec-right.p12" -d "sql:$dir" -W '' >/dev/null || fail "right: pk12util failed"
    cert=ipsec-right
  fi
  chmod 0600 "$dir"/*.db
  cat > "$dir/ipsec.conf" <<EOF
config setup
	ipsecdir=$dir
	nssdir=$dir
	logfile=$dir/pluto.log
	logappend=no
	plutodebug=none
	dumpdir=$dir/run

conn p11proxy
	ikev2=insist
	authby=rsasig
	type=tunnel
	left=$( [ "$side" = left ] && echo $LEFT_IP || echo $RIGHT_IP )
	leftid="$( [ "$side" = left ] && echo "$LEFT_ID" || echo "$RIGHT_ID" )"
	leftcert=$cert
	right=$( [ "$side" = left ] && echo $RIGHT_IP || echo $LEFT_IP )
	rightid="$( [ "$side" = left ] && echo "$RIGHT_ID" || echo "$LEFT_ID" )"
	rightca=%same
	ike=aes256-sha2_256;dh19
	esp=aes256-sha2_256
	auto=add
EOF
  printf '' > "$dir/ipsec.secrets"
}

# start_pluto SIDE MODE NAMESPACE [env...]: pluto in the namespace, connection loaded.
start_pluto() {
  local side=$1 mode=$2 ns=$3 dir="$d/$1-$2"
  shift 3
  env "$@" timeout 200 ip netns exec "$ns" "$PLUTO" --nofork --config "$dir/ipsec.conf" --secretsfile "$dir/ipsec.secrets" \
    --nssdir "$dir" --ipsecdir "$dir" --rundir "$dir/run" --logfile "$dir/pluto.log" --log-no-time \
    >"$dir/pluto.out" 2>&1 &
  FIXTURE_PIDS+=($!)
  local i
  for i in $(seq 1 100); do
    [ -S "$dir/run/pluto.ctl" ] && break
    kill -0 "${FIXTURE_PIDS[-1]}" 2>/dev/null || fail "$side $mode: pluto exited: $(tail -5 "$dir/pluto.log" "$dir/pluto.out" 2>/dev/null)"
    sleep 0.1
  done
  [ -S "$dir/run/pluto.ctl" ] || fail "$side $mode: pluto's control socket did not appear"
  # The control socket comes before the IKE sockets: whack --initiate needs both.
  fixture_wait_file "$dir/pluto.log" "^adding UDP interface $ns [0-9.]+:500\$" 30 \
    || fail "$side $mode: pluto does not listen on $ns: $(tail -n 5 "$dir/pluto.log")"
  env "$@" ip netns exec "$ns" "$ADDCONN" --config "$dir/ipsec.conf" --ctlsocket "$dir/run/pluto.ctl" p11proxy \
    >"$dir/addconn.out" 2>&1 || fail "$side $mode: addconn failed: $(cat "$dir/addconn.out")"
  PLUTO_PID_LAST=${FIXTURE_PIDS[-1]}
}

# xfrm_packets NAMESPACE: packets counted over all of the namespace's xfrm states.
xfrm_packets() {
  ip -n "$1" -s xfrm state | grep -oE '[0-9]+\(packets\)' | tr -d '(packets)' | awk '{ total += $1 } END { print total + 0 }'
}

tunnel() {
  local mode=$1 address="" left_pid right_pid status=0
  echo "== $mode"
  setup_side left "$mode"
  setup_side right "$mode"
  [ "$mode" = broker ] && address=$BROKER_ADDRESS
  start_pluto right "$mode" "$RIGHT"
  right_pid=$PLUTO_PID_LAST
  start_pluto left "$mode" "$LEFT" ${address:+P11_KIT_SERVER_ADDRESS=$address}
  left_pid=$PLUTO_PID_LAST
  local left_dir="$d/left-$mode" right_dir="$d/right-$mode"
  timeout 60 ip netns exec "$LEFT" ipsec whack --ctlsocket "$left_dir/run/pluto.ctl" --initiate --name p11proxy \
    >"$left_dir/initiate.out" 2>&1 || status=$?
  # IKE_AUTH: right verified left's signature, made with the token key, against left's certificate.
  if ! grep -q "initiator established IKE SA; authenticated peer" "$left_dir/initiate.out" ||
     ! grep -qF "responder established IKE SA; authenticated peer" "$right_dir/pluto.log"; then
    tail -n 15 "$left_dir/initiate.out" "$left_dir/pluto.log" "$right_dir/pluto.log" >&2
    fail "$mode: the IKE SA was not established (whack --initiate: status $status)"
  fi
  local auth
  auth=$(grep -m1 -o "responder established IKE SA; authenticated peer .*" "$right_dir/pluto.log")
  grep -qF "using peer certificate '$LEFT_ID'" <<<"$auth" || fail "$mode: right authenticated another peer: $auth"
  echo "$mode: left: $(grep -m1 -o 'loaded private key matching left certificate .*' "$left_dir/pluto.log")"
  echo "$mode: right: ${auth#responder established IKE SA; }"
  if [ -z "$KERNEL_ESP" ]; then
    # This kernel cannot hold ESP SAs: the Child SA must get as far as the kernel and no further.
    grep -q "netlink response for Add SA esp\..*Protocol not supported" "$right_dir/pluto.log" \
      || fail "$mode: the Child SA failed for another reason than the kernel's missing ESP: $(grep -m3 -E 'ERROR|fail' "$right_dir/pluto.log")"
    echo "$mode: Child SA negotiated ($(grep -m1 -o 'proposal 1:ESP=[^ ]*' "$right_dir/pluto.log")); the kernel refuses ESP SAs (no tunnel traffic here)"
  else
    if [ $status -ne 0 ] || ! grep -q 'established Child SA' "$left_dir/initiate.out"; then
      tail -n 15 "$left_dir/initiate.out" "$left_dir/pluto.log" "$right_dir/pluto.log" >&2
      fail "$mode: the Child SA did not come up (whack --initiate: status $status)"
    fi
    local left_states right_states before_left before_right after_left after_right
    left_states=$(ip -n "$LEFT" xfrm state | grep -c '^src')
    right_states=$(ip -n "$RIGHT" xfrm state | grep -c '^src')
    [ "$left_states" -ge 2 ] && [ "$right_states" -ge 2 ] || fail "$mode: ip xfrm state: $left_states SAs left, $right_states right"
    ip -n "$LEFT" xfrm state | grep -q "proto esp" || fail "$mode: no ESP SA in the left namespace"
    before_left=$(xfrm_packets "$LEFT")
    before_right=$(xfrm_packets "$RIGHT")
    ip netns exec "$LEFT" ping -c 5 -i 0.2 -W 5 "$RIGHT_IP" >"$d/ping-$mode.out" || fail "$mode: ping over the tunnel failed"
    after_left=$(xfrm_packets "$LEFT")
    after_right=$(xfrm_packets "$RIGHT")
    # 5 echo requests out and 5 replies in, on each side's two SAs.
    [ $((after_left - before_left)) -ge 10 ] && [ $((after_right - before_right)) -ge 10 ] \
      || fail "$mode: the ping did not cross the SAs (xfrm packets left $before_left -> $after_left, right $before_right -> $after_right)"
    echo "$mode: $(grep -m1 -o 'established Child SA.*' "$left_dir/initiate.out" | cut -c1-110)"
    echo "$mode: ip xfrm state: $left_states SAs left, $right_states right (ESP); ping -c 5 $RIGHT_IP: $(grep -o '[0-9]* received' "$d/ping-$mode.out");" \
      "xfrm packets left +$((after_left - before_left)), right +$((after_right - before_right))"
  fi
  ip netns exec "$LEFT" ipsec whack --ctlsocket "$left_dir/run/pluto.ctl" --shutdown >/dev/null 2>&1 || true
  ip netns exec "$RIGHT" ipsec whack --ctlsocket "$right_dir/run/pluto.ctl" --shutdown >/dev/null 2>&1 || true
  wait "$left_pid" "$right_pid" 2>/dev/null || true
  ip -n "$LEFT" xfrm state flush; ip -n "$RIGHT" xfrm state flush
  ip -n "$LEFT" xfrm policy flush; ip -n "$RIGHT" xfrm policy flush
}

# Whether this kernel can hold ESP SAs at all (a kernel without esp4 answers "Requested type not
# found"); without it the test shows IKE up to the kernel's refusal, with it the whole tunnel.
ip netns add "p11k$$" && fixture_on_exit "ip netns del p11k$$"
key=0x$(printf '%064d' 0)
if probe=$(ip -n "p11k$$" xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 mode tunnel \
              enc 'cbc(aes)' "$key" auth-trunc 'hmac(sha256)' "$key" 128 2>&1); then
  KERNEL_ESP=1
else
  KERNEL_ESP=""
  echo "note: this kernel ($(uname -r)) cannot hold ESP SAs ('ip xfrm state add ... proto esp': $probe):" \
    "IKE is shown up to the Child SA, tunnel traffic is not"
fi

tunnel direct
signatures_before=$(grep -cE ': C_Sign(Final)? .*CKR_OK' "$d/broker.err" || true)
tunnel broker
[ "$(grep -cE ': C_Sign(Final)? .*CKR_OK' "$d/broker.err" || true)" -gt "$signatures_before" ] \
  || fail "broker: pluto's signature did not go through the broker"
echo "broker: the broker logged $(grep -cE ': C_Sign(Final)? .*CKR_OK' "$d/broker.err") C_Sign -> CKR_OK"
if [ -n "$KERNEL_ESP" ]; then
  echo "Libreswan IKEv2 tunnel with the token's RSA key ok, traffic crosses it, directly and through p11proxy ($(fixture_elapsed) s)"
else
  echo "Libreswan IKEv2 authenticated with the token's RSA key, directly and through p11proxy; no ESP in this kernel, so no tunnel traffic ($(fixture_elapsed) s)"
fi
