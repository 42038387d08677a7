#!/usr/bin/env bash
# Certificates for running the webhook on this machine (`make run`), made only when needed.
#
# Generates certs/out/{ca.crt,ca.key,tls.crt,tls.key} for the Service
# pod-identity-webhook.default plus localhost, 127.0.0.1 and ::1 when tls.crt or tls.key is
# missing or unusable, or tls.crt expires within 7 days. The CA already in certs/out is reused,
# so the caBundle stays the same. Uses Python's `cryptography`, not the openssl CLI.
#
#   PY=path/to/python    interpreter with this project installed (default .venv/bin/python)
#   CERTS_OUT=dir        output directory (default certs/out)
# Prints the caBundle (base64 of ca.crt) as its last line, "caBundle  <base64>", either way.
# Relative paths are taken from the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PY:-.venv/bin/python}"
OUT="${CERTS_OUT:-certs/out}"

state="$("$PY" -c '
import sys
from datetime import timedelta
from webhook.certs import needs_renewal
renew = needs_renewal(sys.argv[1], sys.argv[2], within=timedelta(days=7))
print("renew" if renew else "fresh")
' "$OUT/tls.crt" "$OUT/tls.key")"

if [[ "$state" == "fresh" ]]; then
  echo "certs: $OUT/tls.crt is valid for more than 7 days; keeping it" >&2
  bundle="$("$PY" -c 'import base64, sys; print(base64.b64encode(open(sys.argv[1], "rb").read()).decode())' "$OUT/ca.crt")"
else
  # The summary goes to stderr; stdout's last line is the caBundle, printed below.
  bundle="$("$PY" -m webhook certs generate \
    --service pod-identity-webhook --namespace default --localhost --out "$OUT" | tail -n 1)"
fi
# What a MutatingWebhookConfiguration pointing here needs (base64 of $OUT/ca.crt).
echo "caBundle  $bundle"
