#!/usr/bin/env bash
# The reference cannot drift: man/reference.json is the one source of the man pages, the README's
# reference blocks and the broker's --help (rendered into the broker at build time). Fails when
# README.md's generated blocks differ from the source, when the built broker's --help is not the
# source's usage text, when the broker's parser refuses an option the source documents or accepts
# it in a mode the source does not name (or names one the source lacks), or when a generated man
# page makes man(1) warn.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
BROKER=$OUT/p11proxy-broker
FIXTURE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/p11proxy-reference.XXXXXX")
d=$FIXTURE_DIR

"$PY" "$ROOT/man/generate.py" check "$ROOT/README.md" >"$d/check.out" 2>&1 \
  || fail "README.md and man/reference.json disagree:$(printf '\n'; head -40 "$d/check.out")"
echo "README.md's generated blocks equal what man/reference.json gives ($(grep -c '^<!-- generated from man/reference.json' "$ROOT/README.md") blocks)"

# --help: on standard output, exit 0, exactly the source's usage text.
"$BROKER" --help >"$d/help" 2>"$d/help.err" || fail "p11proxy-broker --help failed: $(cat "$d/help.err")"
[ -s "$d/help.err" ] && fail "p11proxy-broker --help wrote to standard error: $(head -3 "$d/help.err")"
"$PY" "$ROOT/man/generate.py" usage >"$d/usage"
cmp -s "$d/help" "$d/usage" \
  || fail "p11proxy-broker --help is not man/reference.json's usage text (rebuild the broker?):
$(diff "$d/help" "$d/usage" | head -20)"
echo "p11proxy-broker --help is man/reference.json's usage text ($(wc -l <"$d/usage") lines)"

# The parser: every documented option is accepted, and in stdio mode only where the source says so.
"$PY" - "$ROOT/man/reference.json" >"$d/options" <<'EOF'
import json, sys
for option in json.load(open(sys.argv[1]))["broker"]["options"]:
    print(option["name"], option.get("value", "-"), ",".join(option["modes"]))
EOF
NO_MODULE=/nonexistent/p11proxy-reference.so
checked=0
while read -r name value modes; do
  # A value the parser takes: the command line is parsed whole before the module is looked for, so
  # a parsed one ends with the complaint that the module does not exist.
  accepted=()
  extra=()
  case $value in
    -) candidates=("") ;;
    PATH) candidates=("$NO_MODULE") ;;
    URI) candidates=("pkcs11:token=reference") ;;
    PIN-URI) candidates=("pkcs11:token=reference?pin-source=|/bin/true") ;;
    # A policy line needs a --pin holding the token's PIN.
    PEER=URI) candidates=("uid:0=pkcs11:token=reference"); extra=(--pin "pkcs11:token=reference?pin-source=|/bin/true") ;;
    MODE) candidates=(0660) ;;
    STRING) candidates=("configdir='sql:/nonexistent'") ;;
    *) candidates=(0 1 16 64 100 1000) ;;
  esac
  for candidate in "${candidates[@]}"; do
    args=("${extra[@]}" "$name"); [ "$value" = - ] || args+=("$candidate")
    "$BROKER" serve --module "$NO_MODULE" "${args[@]}" </dev/null >/dev/null 2>"$d/serve.err" || true
    grep -q "unknown option '$name'" "$d/serve.err" && fail "p11proxy-broker does not know $name, which man/reference.json documents"
    if grep -q "module $NO_MODULE does not exist" "$d/serve.err"; then accepted=("${args[@]}"); break; fi
  done
  [ ${#accepted[@]} -gt 0 ] || fail "p11proxy-broker serve refuses every value tried for $name: $(cat "$d/serve.err")"
  status=0
  "$BROKER" stdio --module "$NO_MODULE" "${accepted[@]}" </dev/null >/dev/null 2>"$d/stdio.err" || status=$?
  if [[ ",$modes," == *,stdio,* ]]; then
    grep -q "applies to 'serve' only" "$d/stdio.err" && fail "p11proxy-broker stdio refuses $name, which man/reference.json gives stdio mode"
    grep -qF "$NO_MODULE" "$d/stdio.err" \
      || fail "p11proxy-broker stdio ${accepted[*]}: expected the complaint about the module, got: $(cat "$d/stdio.err")"
  else
    [ $status -eq 2 ] && grep -q -- "$name applies to 'serve' only" "$d/stdio.err" \
      || fail "p11proxy-broker stdio accepts $name, which man/reference.json gives serve mode only (status $status: $(cat "$d/stdio.err"))"
  fi
  checked=$((checked + 1))
done <"$d/options"
echo "p11proxy-broker accepts each of the $checked documented options, in stdio mode exactly those documented for it"

# And the other way: an option the parser knows (Program.cs) that the source does not document.
# --listener-pid is the internal worker mode's, started by the listener only; --help is the usage itself.
grep -oE '"--[a-z][a-z-]+"' "$ROOT/src/Broker/Program.cs" | tr -d '"' | grep -vxE -- '--(listener-pid|help)' | sort -u >"$d/parser-options"
cut -d' ' -f1 "$d/options" | sort -u >"$d/source-options"
undocumented=$(comm -23 "$d/parser-options" "$d/source-options")
[ -z "$undocumented" ] || fail "src/Broker/Program.cs knows options man/reference.json does not document: $undocumented"
echo "src/Broker/Program.cs names no option that man/reference.json lacks ($(wc -l <"$d/parser-options") names)"

"$PY" "$ROOT/man/generate.py" man "$d/man"
for page in p11proxy.8 p11proxy-broker.8 p11proxy.conf.5; do
  warnings=$(LANG=C.UTF-8 MANWIDTH=100 man --warnings -l "$d/man/$page" 2>&1 >"$d/$page.txt") \
    || fail "man -l $page failed: $warnings"
  [ -z "$warnings" ] || fail "man warns about $page: $warnings"
  grep -q "^NAME" "$d/$page.txt" || fail "$page has no NAME section"
  echo "$page: $(wc -l <"$d/$page.txt") lines, sections $(grep -E '^[A-Z][A-Z ]+$' "$d/$page.txt" | tr '\n' ' ')"
done
