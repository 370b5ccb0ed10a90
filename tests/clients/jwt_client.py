#!/usr/bin/env python3
"""An independent SMART Backend Services client for fhirwall's e2e tests.

Uses PyJWT + cryptography (not fhirwall's code) to make key pairs and sign
client assertions. Commands print JSON on stdout:

  keygen --alg RS384|ES384
      {"private_pem": ..., "jwk": {public JWK, kid = RFC 7638 thumbprint}}
  sign --key-pem FILE --alg ALG --iss ID --aud URL [--sub ID] [--kid KID|--no-kid]
       [--exp-in S] [--jti J] [--header-json {...}] [--claims-json {...}] [--drop CLAIM...]
      {"assertion": "<compact JWS>"}
  sign-none --iss ID --aud URL     an unsigned (alg none) token
  sign-hs256 --secret-file F ...   an HS256 token keyed with a file's bytes (key confusion)
"""
import argparse
import base64
import hashlib
import json
import secrets
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_uint(n, length=None):
    length = length or (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))


def public_jwk(key, alg):
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        members = {"e": b64u_uint(nums.e), "kty": "RSA", "n": b64u_uint(nums.n)}
    else:
        nums = pub.public_numbers()
        size = (pub.curve.key_size + 7) // 8
        crv = {"secp384r1": "P-384", "secp256r1": "P-256"}[pub.curve.name]
        members = {"crv": crv, "kty": "EC", "x": b64u_uint(nums.x, size), "y": b64u_uint(nums.y, size)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    kid = b64u(hashlib.sha256(canonical.encode()).digest())
    return dict(members, kid=kid, alg=alg, use="sig")


def keygen(args):
    if args.alg.startswith("RS") or args.alg.startswith("PS"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif args.alg == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif args.alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        sys.exit("unknown alg " + args.alg)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    print(json.dumps({"private_pem": pem, "jwk": public_jwk(key, args.alg)}))


def claims_of(args):
    now = int(time.time())
    claims = {
        "iss": args.iss,
        "sub": args.sub or args.iss,
        "aud": args.aud,
        "exp": now + args.exp_in,
        "iat": now,
        "jti": args.jti or secrets.token_hex(16),
    }
    if args.claims_json:
        claims.update(json.loads(args.claims_json))
    for name in args.drop or []:
        claims.pop(name, None)
    return claims


def sign(args):
    with open(args.key_pem, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    headers = {"typ": "JWT"}
    if not args.no_kid:
        headers["kid"] = args.kid or public_jwk(key, args.alg)["kid"]
    if args.header_json:
        headers.update(json.loads(args.header_json))
    token = jwt.encode(claims_of(args), key, algorithm=args.alg, headers=headers)
    print(json.dumps({"assertion": token}))


def sign_none(args):
    header = b64u(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64u(json.dumps(claims_of(args)).encode())
    print(json.dumps({"assertion": header + "." + payload + "."}))


def sign_hs256(args):
    with open(args.secret_file, "rb") as f:
        secret = f.read()
    header = b64u(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64u(json.dumps(claims_of(args)).encode())
    import hmac

    sig = hmac.new(secret, (header + "." + payload).encode(), hashlib.sha256).digest()
    print(json.dumps({"assertion": header + "." + payload + "." + b64u(sig)}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen")
    k.add_argument("--alg", default="RS384")
    for name in ("sign", "sign-none", "sign-hs256"):
        s = sub.add_parser(name)
        s.add_argument("--iss", required=True)
        s.add_argument("--sub")
        s.add_argument("--aud", required=True)
        s.add_argument("--exp-in", type=int, default=240)
        s.add_argument("--jti")
        s.add_argument("--claims-json")
        s.add_argument("--drop", nargs="*")
        if name == "sign":
            s.add_argument("--key-pem", required=True)
            s.add_argument("--alg", default="RS384")
            s.add_argument("--kid")
            s.add_argument("--no-kid", action="store_true")
            s.add_argument("--header-json")
        if name == "sign-hs256":
            s.add_argument("--secret-file", required=True)
    args = p.parse_args()
    {"keygen": keygen, "sign": sign, "sign-none": sign_none, "sign-hs256": sign_hs256}[args.cmd](args)


if __name__ == "__main__":
    main()
