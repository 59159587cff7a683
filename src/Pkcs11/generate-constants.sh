#!/usr/bin/env bash
# Generates src/Pkcs11/Pkcs11Constants.g.cs from the C headers, so that no
# PKCS#11 value is ever typed by hand.
#
#   bash src/Pkcs11/generate-constants.sh
#
# Inputs:  /usr/include/nss/pkcs11t.h (Debian: libnss3-dev; override with PKCS11T_H=...)
#          src/Pkcs11/vendor-extensions.h (IBM names p11-kit's RPC uses, and the few
#          standard 2.40 names NSS's header omits; no Debian header has them)
# Output:  src/Pkcs11/Pkcs11Constants.g.cs (override with PKCS11_CONSTANTS_OUT=...)
#
# Only object-like #defines named CK* / CRYPTOKI_VERSION_* whose body is an
# integer constant expression are emitted; everything else (function-like
# macros, pointers, strings, names we cannot resolve) is skipped. Output order
# is header order, so the result is deterministic.
set -euo pipefail
export LC_ALL=C

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
header=${PKCS11T_H:-/usr/include/nss/pkcs11t.h}
vendor=$script_dir/vendor-extensions.h
out=${PKCS11_CONSTANTS_OUT:-$script_dir/Pkcs11Constants.g.cs}   # override: tests compare a fresh run with the checked-in file

if [[ ! -r $header ]]; then
    echo "generate-constants.sh: cannot read $header" >&2
    echo "  It is the OASIS PKCS#11 3.0 type header shipped by NSS; install it with:" >&2
    echo "    sudo apt-get install libnss3-dev" >&2
    echo "  (or point PKCS11T_H at another copy of pkcs11t.h)" >&2
    exit 1
fi
if [[ ! -r $vendor ]]; then
    echo "generate-constants.sh: cannot read $vendor (it is part of this repository)" >&2
    exit 1
fi

tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT

awk '
# ---------- phase 1: read #defines (C translation phases 2 and 3: splice lines, drop comments) ----------
FNR == 1 { pending = ""; incomment = 0 }
{
    line = $0
    sub(/\r$/, "", line)
    if (pending != "") { line = pending line; pending = "" }
    if (line ~ /\\$/) { pending = substr(line, 1, length(line) - 1); next }

    text = ""
    while (line != "") {
        if (incomment) {
            p = index(line, "*/")
            if (p == 0) { line = ""; break }
            line = substr(line, p + 2); incomment = 0; text = text " "
        } else {
            p = index(line, "/*"); q = index(line, "//")
            if (q > 0 && (p == 0 || q < p)) { text = text substr(line, 1, q - 1); line = ""; break }
            if (p == 0) { text = text line; line = ""; break }
            text = text substr(line, 1, p - 1); line = substr(line, p + 2); incomment = 1
        }
    }

    if (text !~ /^[ \t]*#[ \t]*define[ \t]/) next
    sub(/^[ \t]*#[ \t]*define[ \t]+/, "", text)
    if (!match(text, /^[A-Za-z_][A-Za-z0-9_]*/)) next
    name = substr(text, 1, RLENGTH)
    body = substr(text, RLENGTH + 1)
    if (body ~ /^\(/) next                      # function-like macro
    gsub(/^[ \t]+|[ \t]+$/, "", body)
    if (name in defined) {
        if (defined[name] != body)
            printf "generate-constants.sh: warning: %s redefined in %s; keeping the first definition\n", name, FILENAME > "/dev/stderr"
        next
    }
    defined[name] = body
    if (name !~ /^CK/ && name !~ /^CRYPTOKI_VERSION_/) next
    if (name == "CK_NULL_PTR") next             # a pointer, not an integer
    n++; order[n] = name; body_of[name] = body
}

# ---------- helpers ----------
function hexval(s,    i, c, v) {
    v = 0
    for (i = 3; i <= length(s); i++) { c = index("0123456789abcdef", tolower(substr(s, i, 1))) - 1; v = v * 16 + c }
    return v
}
# Bitwise helpers on doubles; exact while values stay below 2^53 (results above are marked unknown).
function bitop(a, b, op,    r, bit, x, y) {
    r = 0; bit = 1
    while (a > 0 || b > 0) {
        x = a % 2; y = b % 2
        if ((op == "|" && (x || y)) || (op == "&" && x && y) || (op == "^" && x != y)) r += bit
        a = (a - x) / 2; b = (b - y) / 2; bit *= 2
    }
    return r
}
# Splits body into tok[name, 1..ntok[name]]; returns 0 if it is not an integer expression.
function tokenize(name, s,    k, t) {
    k = 0
    while (s != "") {
        if (match(s, /^[ \t]+/)) { s = substr(s, RLENGTH + 1); continue }
        if (match(s, /^(0[xX][0-9A-Fa-f]+|[0-9]+)[uUlL]*/)) {
            t = substr(s, 1, RLENGTH); s = substr(s, RLENGTH + 1)
            if (substr(s, 1, 1) ~ /[A-Za-z0-9_.]/) return 0
            sub(/[uUlL]+$/, "", t)
            k++; tok[name, k] = "#" t; continue
        }
        if (match(s, /^[A-Za-z_][A-Za-z0-9_]*/)) { k++; tok[name, k] = substr(s, 1, RLENGTH); s = substr(s, RLENGTH + 1); continue }
        if (match(s, /^(<<|>>)/)) { k++; tok[name, k] = substr(s, 1, 2); s = substr(s, 3); continue }
        t = substr(s, 1, 1)
        if (index("|&^+-~()", t) == 0) return 0
        k++; tok[name, k] = t; s = substr(s, 2)
    }
    ntok[name] = k
    return k > 0
}
function isoperand(t) { return t ~ /^[#A-Za-z_(~]/ }
# Removes C casts such as (CK_ULONG) or (CK_RV): a parenthesised type name followed by an operand.
function dropcasts(name,    i, j, k, m) {
    m = ntok[name]; k = 0
    for (i = 1; i <= m; i++) {
        if (tok[name, i] == "(" && i + 3 <= m && tok[name, i + 2] == ")" && tok[name, i + 1] ~ /^CK_[A-Z0-9_]+$/ \
            && !(tok[name, i + 1] in defined) && isoperand(tok[name, i + 3])) { i += 2; continue }
        k++; tmp_tok[k] = tok[name, i]
    }
    for (j = 1; j <= k; j++) tok[name, j] = tmp_tok[j]
    ntok[name] = k
}
# Drops one pair of parentheses if it encloses the whole expression.
function dropouter(name,    i, m, depth) {
    m = ntok[name]
    while (m >= 2 && tok[name, 1] == "(" && tok[name, m] == ")") {
        depth = 0
        for (i = 1; i < m; i++) {
            if (tok[name, i] == "(") depth++
            else if (tok[name, i] == ")") depth--
            if (depth == 0) return
        }
        for (i = 1; i < m - 1; i++) tok[name, i] = tok[name, i + 1]
        m -= 2; ntok[name] = m
    }
}

# ---------- evaluator (only to find duplicate values for the name switches) ----------
function peek() { return pos <= ntok[cur] ? tok[cur, pos] : "" }
function ev_primary(    t, v) {
    t = peek(); pos++
    if (t == "(") { v = ev_or(); if (peek() == ")") pos++; else unknown = 1; return v }
    if (t == "~") { ev_primary(); unknown = 1; return 0 }      # 64-bit complement: beyond double precision
    if (t == "-") { return -ev_primary() }
    if (t == "+") { return ev_primary() }
    if (t ~ /^#0[xX]/) return hexval(substr(t, 2))
    if (t ~ /^#/) return substr(t, 2) + 0
    if (t in value) return value[t]
    unknown = 1; return 0
}
function ev_add(    v, t) {
    v = ev_primary()
    while ((t = peek()) == "+" || t == "-") { pos++; if (t == "+") v += ev_primary(); else v -= ev_primary() }
    return v
}
function ev_shift(    v, t, s) {
    v = ev_add()
    while ((t = peek()) == "<<" || t == ">>") { pos++; s = ev_add(); if (t == "<<") v = v * 2 ^ s; else v = int(v / 2 ^ s) }
    return v
}
function ev_and(    v) { v = ev_shift(); while (peek() == "&") { pos++; v = bitop(v, ev_shift(), "&") } return v }
function ev_xor(    v) { v = ev_and(); while (peek() == "^") { pos++; v = bitop(v, ev_and(), "^") } return v }
function ev_or(    v) { v = ev_xor(); while (peek() == "|") { pos++; v = bitop(v, ev_xor(), "|") } return v }

function csharp(name,    i, t, s, prev, hasminus) {
    s = ""; prev = ""; hasminus = 0
    for (i = 1; i <= ntok[name]; i++) {
        t = tok[name, i]
        # C# shift counts are int: a literal count loses its suffix, anything else gets a cast.
        if (prev == "<<" || prev == ">>") t = (t ~ /^#/) ? substr(t, 2) : "(int)" t
        else if (t ~ /^#/) t = substr(t, 2) "UL"
        if (t == "-") hasminus = 1
        if (s != "" && prev != "(" && prev != "~" && t != ")" && !(t ~ /^[-+]$/ && (prev == "" || prev ~ /^(\(|[|&^+~-]|<<|>>)$/)))
            s = s " "
        else if (s != "" && t ~ /^[-+]$/ && prev !~ /^(\(|~)$/) s = s " "
        s = s t; prev = t
    }
    # C# refuses constant folding that leaves the ulong range; C just wraps.
    if (hasminus) s = "unchecked((ulong)(" s "))"
    return s
}

END {
    for (i = 1; i <= n; i++) {
        name = order[i]
        ok[name] = tokenize(name, body_of[name])
        if (ok[name]) { dropcasts(name); dropouter(name) }
    }
    # A name is usable only if every name it refers to is usable (fixpoint).
    do {
        changed = 0
        for (i = 1; i <= n; i++) {
            name = order[i]
            if (!ok[name]) continue
            for (j = 1; j <= ntok[name]; j++) {
                t = tok[name, j]
                if (t ~ /^[A-Za-z_]/ && !ok[t]) { ok[name] = 0; changed = 1; break }
            }
        }
    } while (changed)

    for (i = 1; i <= n; i++) {
        name = order[i]
        if (!ok[name]) continue
        cur = name; pos = 1; unknown = 0
        v = ev_or()
        if (!unknown && pos == ntok[name] + 1 && v >= 0 && v < 2 ^ 53) value[name] = v
    }

    print "// <auto-generated> by src/Pkcs11/generate-constants.sh from pkcs11t.h and vendor-extensions.h; do not edit. </auto-generated>"
    print "#nullable enable // generated code is outside the nullable context unless it opts in"
    print "namespace P11Proxy.Pkcs11;"
    print ""
    print "public static partial class Pkcs11Constants"
    print "{"
    for (i = 1; i <= n; i++) {
        name = order[i]
        if (ok[name]) printf "    public const ulong %s = %s;\n", name, csharp(name)
    }
    print "}"
    print ""
    print "public static partial class Pkcs11Names"
    print "{"
    emit("ReturnValue", "rv", "CKR_")
    print ""
    emit("Mechanism", "m", "CKM_")
    print ""
    emit("Attribute", "a", "CKA_")
    print ""
    emit("ObjectClass", "c", "CKO_")
    print ""
    emit("KeyType", "k", "CKK_")
    print "}"
}

# First name defined for each value wins, so aliases do not make the switch ambiguous.
function emit(method, arg, prefix,    i, name, key, seen) {
    split("", seen)
    printf "    public static string? %s(ulong %s) => %s switch\n    {\n", method, arg, arg
    for (i = 1; i <= n; i++) {
        name = order[i]
        if (index(name, prefix) != 1 || !ok[name] || !(name in value)) continue
        key = sprintf("%.0f", value[name])
        if (key in seen) continue
        seen[key] = 1
        printf "        Pkcs11Constants.%s => \"%s\",\n", name, name
    }
    print "        _ => null,"
    print "    };"
}
' "$header" "$vendor" > "$tmp"

mv "$tmp" "$out"
trap - EXIT
echo "generate-constants.sh: wrote $out ($(grep -c 'public const ulong' "$out") constants)" >&2
