#!/usr/bin/env bash
# The reference cannot drift: man/reference.json is the one source of the man pages and of the
# README's reference blocks. Fails when README.md's generated blocks differ from the source, when
# the broker's --help names an option the source lacks (or the other way round), or when a
# generated man page makes man(1) warn.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
FIXTURE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/p11proxy-reference.XXXXXX")

"$PY" "$ROOT/man/generate.py" check "$ROOT/README.md" >"$FIXTURE_DIR/check.out" 2>&1 \
  || fail "README.md and man/reference.json disagree:$(printf '\n'; head -40 "$FIXTURE_DIR/check.out")"
echo "README.md's generated blocks equal what man/reference.json gives ($(grep -c '^<!-- generated from man/reference.json' "$ROOT/README.md") blocks)"

help=$("$OUT/p11proxy-broker" --help 2>&1) || fail "p11proxy-broker --help failed: $help"
grep -oE -- '--[a-z][a-z-]+' <<<"$help" | sort -u >"$FIXTURE_DIR/help-options"
"$PY" "$ROOT/man/generate.py" broker-options | grep -- '^--' | sort -u >"$FIXTURE_DIR/source-options"
if ! cmp -s "$FIXTURE_DIR/help-options" "$FIXTURE_DIR/source-options"; then
  fail "p11proxy-broker --help and man/reference.json name different options (< --help only, > source only):
$(diff "$FIXTURE_DIR/help-options" "$FIXTURE_DIR/source-options" | grep '^[<>]')"
fi
echo "p11proxy-broker --help and man/reference.json name the same $(wc -l <"$FIXTURE_DIR/source-options") options"

"$PY" "$ROOT/man/generate.py" man "$FIXTURE_DIR/man"
for page in p11proxy.8 p11proxy-broker.8 p11proxy.conf.5; do
  warnings=$(LANG=C.UTF-8 MANWIDTH=100 man --warnings -l "$FIXTURE_DIR/man/$page" 2>&1 >"$FIXTURE_DIR/$page.txt") \
    || fail "man -l $page failed: $warnings"
  [ -z "$warnings" ] || fail "man warns about $page: $warnings"
  grep -q "^NAME" "$FIXTURE_DIR/$page.txt" || fail "$page has no NAME section"
  echo "$page: $(wc -l <"$FIXTURE_DIR/$page.txt") lines, sections $(grep -E '^[A-Z][A-Z ]+$' "$FIXTURE_DIR/$page.txt" | tr '\n' ' ')"
done
