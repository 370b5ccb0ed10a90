#!/usr/bin/env bash
# One Group bulk export from fhirwall with the third-party client smart-fetch
# (PyPI smart-fetch, pinned in smart-fetch-requirements.txt), as a provider
# system would run it.
#
# Env: SMART_FETCH (its executable, in a venv), FHIR_URL, CLIENT_ID, KEY_PEM
# (private key from `fhirwall keygen`), GROUP, TYPES (comma list), OUT_DIR;
# optional: KID, or JWKS_PATH (the public JWKS keygen wrote) to take kid and
# alg from; SINCE (a FHIR instant, e.g. 2020-01-01T00:00:00Z); TYPE_FILTER
# (one `Type?params` per line).
# Writes OUT_DIR/{Type}.{NNN}.ndjson (NNN = 001, 002... per file of that type),
# OUT_DIR/error/OperationOutcome.001.ndjson if the manifest lists errors, and
# smart-fetch's own OUT_DIR/log.ndjson and OUT_DIR/.metadata.
# Exit status: smart-fetch's (0 done; 1 failed; 2 bad arguments; 124 timeout).
set -euo pipefail
: "${SMART_FETCH:?}" "${FHIR_URL:?}" "${CLIENT_ID:?}" "${KEY_PEM:?}" "${GROUP:?}" "${TYPES:?}" "${OUT_DIR:?}"

# smart-fetch resumes from OUT_DIR/.metadata and skips types it marked done
# there, so a reused folder would silently report an older export.
if [[ -e "$OUT_DIR/.metadata" ]]; then
  echo "OUT_DIR $OUT_DIR holds an earlier smart-fetch run; give a fresh one" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SMART_FETCH=$(command -v "$SMART_FETCH")
# The venv's python (the console script's shebang) has jwcrypto, which
# smart-fetch's auth (cumulus-fhir-support) already depends on.
PYTHON=$(head -n1 "$SMART_FETCH" | sed 's/^#!//')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# smart-fetch takes a PEM or a JWKS, but from a PEM it signs without `kid`,
# which fhirwall (SMART Backend Services) refuses. So hand it a private JWKS
# (file name must end in .jwks) whose key has kid, alg and key_ops ["sign"].
( umask 077
  KEY_PEM="$KEY_PEM" KID="${KID:-}" JWKS_PATH="${JWKS_PATH:-}" "$PYTHON" - >"$tmp/key.jwks" <<'EOF'
import json, os, sys
from jwcrypto import jwk

key = jwk.JWK.from_pem(open(os.environ["KEY_PEM"], "rb").read())
kid, alg = os.environ["KID"], None
if os.environ["JWKS_PATH"]:
    # The registered public key that matches this private key.
    for k in json.load(open(os.environ["JWKS_PATH"]))["keys"]:
        if jwk.JWK(**k).thumbprint() == key.thumbprint():
            kid, alg = kid or k.get("kid"), k.get("alg")
            break
    else:
        sys.exit("no key in JWKS_PATH matches KEY_PEM")
# fhirwall keygen's kid is the key's RFC 7638 thumbprint; its algs are RS384/ES384.
kid = kid or key.thumbprint()
alg = alg or {"RSA": "RS384", "P-384": "ES384", "P-256": "ES256"}[key.get("crv") or key["kty"]]
private = json.loads(key.export_private())
private.update(kid=kid, alg=alg, key_ops=["sign"])
json.dump({"keys": [private]}, sys.stdout)
EOF
)

# --no-default-filters: otherwise smart-fetch adds its own Observation
# category _typeFilter. --no-compression: plain .ndjson files to read back.
args=(bulk "$OUT_DIR" --fhir-url "$FHIR_URL" --smart-client-id "$CLIENT_ID"
      --smart-key "$tmp/key.jwks" --group "$GROUP" --type "$TYPES"
      --no-default-filters --no-compression --verbose)
if [[ -n "${SINCE:-}" ]]; then args+=(--since "$SINCE"); fi
while IFS= read -r filter; do
  if [[ -n "$filter" ]]; then args+=(--type-filter "$filter"); fi
done <<<"${TYPE_FILTER:-}"

# Run from the empty temp dir: smart-fetch reads --smart-client-id as a file
# when a file of that name is in the current directory.
cd "$tmp"
status=0
timeout 300 "$SMART_FETCH" "${args[@]}" || status=$?
exit "$status"
