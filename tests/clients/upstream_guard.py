#!/usr/bin/env python3
"""A guarded upstream for fhirwall's upstream-credential tests: an OAuth 2.0
authorization server (client-credentials grant) and a reverse proxy that
admits a request only with one of its live access tokens, optionally over
TLS that demands a client certificate. Written with Python's standard
library and PyJWT/cryptography, independently of fhirwall's code.

    upstream_guard.py --listen-port N --target http://127.0.0.1:M \\
        [--client-id ID (--secret S | --public-key-pem FILE)] [--expires-in S] \\
        [--tls-cert F --tls-key F [--client-ca F]]
    upstream_guard.py --make-certs DIR   # CA, server (127.0.0.1) and client certificates

Endpoints: POST /token; GET /_guard/stats (tokens issued, requests
admitted and refused, assertions seen); POST /_guard/revoke (every token
issued so far stops working); anything else is proxied to --target when it
carries `Authorization: Bearer <live token>` (401 otherwise). With
--no-oauth only TLS is checked. Prints `READY <origin>` when listening.
"""
import argparse
import base64
import datetime
import http.client
import json
import os
import secrets
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

STATE = {"tokens": {}, "issued": 0, "admitted": 0, "refused": 0, "jtis": set(), "grants": []}
LOCK = threading.Lock()


def make_certs(out):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
    import ipaddress

    os.makedirs(out, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path):
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))

    def write_cert(cert, path):
        with open(path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

    def ca(cn, file):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        write_cert(cert, os.path.join(out, file + ".pem"))
        return key, cert

    def leaf(cn, ca_key, ca_cert, file, server):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(
                 [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        write_cert(cert, os.path.join(out, file + ".crt"))
        write_key(key, os.path.join(out, file + ".key"))

    server_ca = ca("guard server CA", "server-ca")
    client_ca = ca("guard client CA", "client-ca")
    other_ca = ca("some other CA", "other-ca")
    leaf("127.0.0.1", *server_ca, "server", True)
    leaf("fhirwall", *client_ca, "client", False)
    leaf("stranger", *other_ca, "stranger", False)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("guard: " + (fmt % args) + "\n")

    def reply(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def route(self, method):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_guard/stats":
            with LOCK:
                stats = {k: STATE[k] for k in ("issued", "admitted", "refused")}
                stats["grants"] = list(STATE["grants"])
            return self.reply(200, stats)
        if path == "/_guard/revoke" and method == "POST":
            with LOCK:
                STATE["tokens"].clear()
            return self.reply(200, {"revoked": True})
        if path == "/token" and method == "POST":
            return self.token()
        return self.proxy(method)

    def token(self):
        args = self.server.args
        form = urllib.parse.parse_qs(self.body().decode(), keep_blank_values=True)
        one = lambda k: (form.get(k) or [None])[0]
        if one("grant_type") != "client_credentials":
            return self.reply(400, {"error": "unsupported_grant_type"})
        how = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic ") and args.secret is not None:
            try:
                raw = base64.b64decode(auth[6:]).decode()
                cid, _, sec = raw.partition(":")
                cid, sec = urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(sec)
            except Exception:
                return self.reply(401, {"error": "invalid_client"})
            if cid == args.client_id and secrets.compare_digest(sec, args.secret):
                how = "client_secret_basic"
        elif one("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" \
                and args.public_key_pem:
            token_url = args.token_url
            try:
                header = jwt.get_unverified_header(one("client_assertion"))
                claims = jwt.decode(one("client_assertion"), open(args.public_key_pem).read(),
                                    algorithms=["RS384", "RS256", "ES384", "ES256"], audience=token_url,
                                    issuer=args.client_id, options={"require": ["exp", "iat", "jti", "sub"]})
            except Exception as e:
                sys.stderr.write("guard: assertion refused: %s\n" % e)
                return self.reply(401, {"error": "invalid_client"})
            with LOCK:
                if claims["sub"] != args.client_id or claims["jti"] in STATE["jtis"] \
                        or (args.kid and header.get("kid") != args.kid):
                    return self.reply(401, {"error": "invalid_client"})
                STATE["jtis"].add(claims["jti"])
            how = "private_key_jwt"
        if how is None:
            return self.reply(401, {"error": "invalid_client"})
        token = secrets.token_urlsafe(24)
        with LOCK:
            STATE["tokens"][token] = time.time() + args.expires_in
            STATE["issued"] += 1
            STATE["grants"].append({"how": how, "scope": one("scope")})
        return self.reply(200, {"access_token": token, "token_type": "Bearer", "expires_in": args.expires_in},
                          headers=[("Cache-Control", "no-store")])

    def proxy(self, method):
        args = self.server.args
        if not args.no_oauth:
            auth = self.headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else None
            with LOCK:
                live = token is not None and STATE["tokens"].get(token, 0) > time.time()
                STATE["admitted" if live else "refused"] += 1
            if not live:
                return self.reply(401, {"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "login", "diagnostics": "no valid access token"}]},
                    "application/fhir+json", [("WWW-Authenticate", 'Bearer error="invalid_token"')])
        else:
            with LOCK:
                STATE["admitted"] += 1
        target = urllib.parse.urlsplit(args.target)
        body = self.body()
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "authorization", "connection", "content-length")}
        conn.request(method, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.reply(resp.status, data, resp.getheader("Content-Type") or "application/octet-stream")
        conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--make-certs")
    p.add_argument("--listen-port", type=int)
    p.add_argument("--target")
    p.add_argument("--client-id", default="fhirwall")
    p.add_argument("--secret")
    p.add_argument("--public-key-pem")
    p.add_argument("--kid")
    p.add_argument("--expires-in", type=int, default=300)
    p.add_argument("--no-oauth", action="store_true")
    p.add_argument("--static-token", help="also admit `Bearer <this>` (a long-lived credential)")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--client-ca")
    args = p.parse_args()
    if args.make_certs:
        make_certs(args.make_certs)
        return
    if args.static_token:
        STATE["tokens"][args.static_token] = float("inf")
    scheme = "https" if args.tls_cert else "http"
    args.token_url = "%s://127.0.0.1:%d/token" % (scheme, args.listen_port)
    server = ThreadingHTTPServer(("127.0.0.1", args.listen_port), Handler)
    server.args = args
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("READY %s://127.0.0.1:%d" % (scheme, args.listen_port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
