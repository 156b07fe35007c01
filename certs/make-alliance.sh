#!/usr/bin/env bash
# Builds a throwaway alliance PKI with `beacon ca`: one CA per member (each
# restricted to its member) and an alliance CA for operators.
# Usage: certs/make-alliance.sh OUT_DIR [TRUST_DOMAIN]
set -euo pipefail
out=${1:?usage: certs/make-alliance.sh OUT_DIR [TRUST_DOMAIN]}
td=${2:-alliance.example}
beacon=${BEACON:-$(dirname "$0")/../target/release/beacon}
[ -x "$beacon" ] || beacon=beacon
mkdir -p "$out"
for member in uk.ncsc fr.anssi drc; do
    dir="$out/$member"
    "$beacon" ca init --dir "$dir/ca" --trust-domain "$td" --members "$member" --name "$member CA"
    "$beacon" ca issue node --dir "$dir/ca" --member "$member" --name node-1 \
        --dns "beacon.$member.example" --dns localhost --ip 127.0.0.1 --out "$dir/node"
    "$beacon" ca issue client --dir "$dir/ca" --member "$member" --name analyst --out "$dir/analyst"
done
"$beacon" ca init --dir "$out/operators/ca" --trust-domain "$td" --members '*' --name "alliance operators CA"
"$beacon" ca issue operator --dir "$out/operators/ca" --name admin --out "$out/operators/admin"
echo "alliance PKI written to $out"
