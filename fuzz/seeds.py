#!/usr/bin/env python3
"""Write the fuzz targets' seed corpora (fuzz/corpus/<target>/).

Seeds are small, real-looking FHIR bits in each target's input format (see
the comment above each `fuzz_target!`): example resources from
examples/dataset/payer.ndjson (ids renamed to the patients the targets'
fixtures know), the HL7 examples under ../shared/data when present, and
hand-written edge cases. Targets whose input is decoded with `arbitrary`
get seeds encoded the way `arbitrary` 1.x reads them (lengths from the end).

    python3 fuzz/seeds.py        # rewrite fuzz/corpus (then commit it)
"""

import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
SHARED = ROOT.parent / "shared" / "data" / "hl7-examples"


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dataset():
    """The first resource of each type for pat-0001 and pat-0002, renamed."""
    wanted = {}
    with open(ROOT / "examples" / "dataset" / "payer.ndjson", encoding="utf-8") as lines:
        for line in lines:
            if "pat-0001" not in line and "pat-0002" not in line:
                continue
            resource = json.loads(line)
            key = (resource["resourceType"], "pat-0001" in line)
            if key not in wanted and len(line) < 2500:
                text = line.replace("pat-0001", "p1").replace("pat-0002", "p4")
                wanted[key] = json.loads(text)
    return wanted


def shared(path):
    file = SHARED / path
    if file.is_file():
        return json.loads(file.read_text(encoding="utf-8"))
    return None


class Arbitrary:
    """Bytes that `arbitrary` 1.x decodes into the values written, in order
    (small inputs only: every length is one byte, taken from the end)."""

    def __init__(self):
        self.front = bytearray()
        self.lengths = []

    def u8(self, v):
        self.front += bytes([v & 0xFF])
        return self

    def bool(self, v):
        return self.u8(1 if v else 0)

    def u16(self, v):
        self.front += struct.pack("<H", v & 0xFFFF)
        return self

    def i16(self, v):
        self.front += struct.pack("<h", v)
        return self

    def i32(self, v):
        self.front += struct.pack("<i", v)
        return self

    def variant(self, index, count):
        """An enum variant: a u32 whose scaled value picks `index`."""
        value = -(-(index << 32) // count)
        self.front += struct.pack("<I", value)
        return self

    def text(self, s):
        data = s.encode() if isinstance(s, str) else bytes(s)
        self.lengths.append(len(data))
        self.front += data
        return self

    def none(self):
        return self.bool(False)

    def some(self):
        return self.bool(True)

    def rest(self, s):
        """The last field, taking the rest of the input."""
        self.front += s.encode() if isinstance(s, str) else bytes(s)
        return self

    def build(self):
        out = bytes(self.front) + bytes(reversed(self.lengths))
        assert len(out) <= 256, "too long for one-byte lengths"
        return out


def write(target, name, data):
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (directory / name).write_bytes(data)


def parse_request():
    # Input { method, path, query, accept, content_type, override_header, body, allow_writes }
    methods = {"GET": 0, "HEAD": 1, "POST": 2, "PUT": 3, "PATCH": 4, "DELETE": 5}

    def request(method, path, query=None, accept=None, content_type=None, body=b"", allow_writes=False):
        a = Arbitrary().u8(methods[method]).text(path)
        for value in (query, accept, content_type):
            if value is None:
                a.none()
            else:
                a.some().text(value)
        return a.bool(False).text(body).rest(bytes([1 if allow_writes else 0])).build()

    write("parse_request", "read", request("GET", "Patient/p1", accept="application/fhir+json"))
    write("parse_request", "search", request("GET", "Observation", "patient=Patient/p1&code=http://loinc.org|4548-4&_count=10"))
    write("parse_request", "search-post", request(
        "POST", "ExplanationOfBenefit/_search", content_type="application/x-www-form-urlencoded",
        body=b"patient=p1&_lastUpdated=gt2020-01-01&_include=ExplanationOfBenefit:provider"))
    write("parse_request", "export", request("GET", "Group/g1/$davinci-data-export", "_type=Patient,Coverage&_since=2024-01-01T00:00:00Z"))
    write("parse_request", "member-match", request(
        "POST", "Patient/$member-match", content_type="application/fhir+json", body=b'{"resourceType":"Parameters"}'))
    write("parse_request", "history", request("GET", "Patient/p1/_history/2"))
    write("parse_request", "update", request(
        "PUT", "Patient/p1", content_type="application/fhir+json", body=b'{"resourceType":"Patient","id":"p1"}',
        allow_writes=True))
    write("parse_request", "traversal", request("GET", "Patient/%2e%2e/Observation", "_format=xml"))


def search_params():
    contexts = {"search": 0, "read": 1, "history": 2, "capabilities": 3, "page": 4, "export": 5, "operation": 6, "write": 7}
    seeds = [
        ("search", "search", "patient=Patient/p1&code=http://loinc.org|4548-4,http://loinc.org|2345-7&_count=50&_sort=-date"),
        ("search-modifiers", "search", "subject:Patient=p1&code:not=abc&name:exact=Smith&_lastUpdated=ge2020-01-01T10:00:00Z,lt2021&_include:iterate=Encounter:patient"),
        ("search-escapes", "search", "name=a\\,b\\$c\\|d\\\\e&note=%3B%23&url=http%3A%2F%2Fexample.org%2Fx&given=John+Smith"),
        ("search-form", "search", "patient=p1&_summary=true\0_elements=id,meta,Patient.name&_id=a,b\0a,b|c$d\\"),
        ("refused", "search", "_has:Observation:patient:code=1&_total=accurate&subject.name=x&_format=xml"),
        ("history", "history", "_count=5&_since=2020-01-01T00:00:00Z&_at=ge2020"),
        ("export", "export", "_type=Patient,Coverage&_since=2020-01-01T00:00:00.123%2B05:00&_outputFormat=application/fhir%2Bndjson&_typeFilter=Observation%3Fcode%3D1&patient=Patient/p1&exportType=hl7.fhir.us.davinci-pdex%23provider-delta"),
        ("read", "read", "_elements=id&_summary=text&_pretty=true"),
        ("capabilities", "capabilities", "mode=full&_format=json"),
    ]
    for name, context, text in seeds:
        write("search_params", name, bytes([contexts[context]]) + text.encode())


def client_assertion():
    import base64

    def b64(value):
        return base64.urlsafe_b64encode(compact(value).encode()).rstrip(b"=").decode()

    claims = {"iss": "c1", "sub": "c1", "aud": "https://fw.example/auth/token", "exp": 1700000240, "jti": "j-1"}
    write("client_assertion", "raw-none", "\0" + f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.")
    write("client_assertion", "raw-hs256", "\0" + f"{b64({'alg': 'HS256', 'kid': 'k'})}.{b64(claims)}.c2lnbmF0dXJl")
    write("client_assertion", "raw-jwk", "\0" + f"{b64({'alg': 'ES384', 'kid': 'k', 'jwk': {'kty': 'EC', 'crv': 'P-384'}})}.{b64(claims)}.AAAA")
    write("client_assertion", "raw-garbage", "\0" + "eyJ.eyJ.!!")

    # Built { alg, kid, header_extra, iss, sub, aud, exp, nbf, iat, jti, claims_extra, signer, corrupt, keys }
    def built(alg, signer=0, exp=100, header_extra=None, keys=0, corrupt=None, aud=0):
        a = Arbitrary().u8(alg).variant(0, 3)
        if header_extra is None:
            a.none()
        else:
            a.some().text(header_extra)
        a.variant(0, 4).variant(0, 4).variant(aud, 6)
        if aud == 1:
            a.text("https://other.example/token")
        a.some().variant(0, 4).i16(exp)  # exp: Offset
        a.none().some().variant(0, 4).i16(-5)  # no nbf; iat: Offset(-5)
        a.variant(0, 5).none().variant(signer, 4)
        if corrupt is None:
            a.none()
        else:
            a.some().u16(corrupt[0]).u8(corrupt[1])
        return a.variant(keys, 3).build()

    write("client_assertion", "good-es384", b"\x01" + built(0))
    write("client_assertion", "good-es256", b"\x01" + built(1))
    write("client_assertion", "good-rs384", b"\x01" + built(2, aud=1))
    write("client_assertion", "intruder", b"\x01" + built(0, signer=1))
    write("client_assertion", "hs256-confusion", b"\x01" + built(6))
    write("client_assertion", "expired", b"\x01" + built(0, exp=-61))
    write("client_assertion", "jku-header", b"\x01" + built(0, header_extra='{"jku":"https://evil.example/jwks"}'))
    write("client_assertion", "corrupted", b"\x01" + built(0, corrupt=(40, 4)))
    write("client_assertion", "twin-kid", b"\x01" + built(0, keys=1))
    jwks = [
        {"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS384", "use": "sig", "n": "AQAB", "e": "AQAB"}]},
        {"keys": [{"kty": "EC", "kid": "k1", "crv": "P-384", "x": "AAAA", "y": "AAAA"}]},
        {"keys": [{"kty": "EC", "kid": "k1", "crv": "P-256", "alg": "ES256",
                   "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]},
    ]
    smart = shared("smart/ES384.public.json")
    if smart:
        jwks.append(smart)
    for n, value in enumerate(jwks):
        write("client_assertion", f"jwks-{n}", b"\x02" + compact(value).encode() + b"\0" + built(0 if n != 2 else 1))


def operation_params():
    data = dataset()
    patient = {"resourceType": "Patient", "id": "1", "name": [{"family": "Doe", "given": ["Jane"]}], "birthDate": "1970-01-01"}
    coverage = {"resourceType": "Coverage", "status": "active", "beneficiary": {"reference": "Patient/1"},
                "subscriberId": "FW1000105", "payor": [{"reference": "Organization/payer"}]}
    consent = {
        "resourceType": "Consent", "status": "active", "patient": {"reference": "Patient/1"},
        "policy": [{"uri": "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular"}],
        "provision": {
            "type": "permit", "period": {"start": "2026-01-01", "end": "2027-12-31"},
            "actor": [
                {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "performer"}]},
                 "reference": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "9876543210"}}},
                {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                 "reference": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1417987256"}}},
            ],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "disclose"}]}],
        },
    }

    def params(*parts):
        return {"resourceType": "Parameters", "parameter": list(parts)}

    # op 0: $member-match (flags bit 0: the caller has an NPI); settings: today.
    member = params({"name": "MemberPatient", "resource": patient}, {"name": "CoverageToMatch", "resource": coverage},
                    {"name": "Consent", "resource": consent})
    write("operation_params", "member-match", bytes([3, 0]) + compact(member).encode())
    write("operation_params", "member-match-no-consent", bytes([0, 1]) + compact(params(
        {"name": "MemberPatient", "resource": patient}, {"name": "CoverageToMatch", "resource": coverage})).encode())
    remote = dict(coverage, beneficiary={"reference": "https://elsewhere.example/Patient/1"})
    write("operation_params", "member-match-remote-ref", bytes([3, 0]) + compact(params(
        {"name": "MemberPatient", "resource": patient}, {"name": "CoverageToMatch", "resource": remote})).encode())
    hrex = shared("hrex-1.1.0/parameters-member-match-in.json")
    if hrex:
        write("operation_params", "hrex-1.1.0", bytes([3, 0]) + compact(hrex).encode())
    # op 1: $provider-member-match (flags: NPI given / none / empty); settings: cap and today.
    bundle = {"name": "MemberBundle", "part": [
        {"name": "MemberPatient", "resource": dict(patient, id="prov-1")},
        {"name": "CoverageToMatch", "resource": coverage},
        {"name": "Consent", "resource": dict(consent, patient={"reference": "Patient/prov-1"})},
    ]}
    write("operation_params", "provider-match", bytes([1, 3]) + compact(params(bundle, bundle)).encode())
    odd = dict(consent, patient={"reference": "Patient/prov-1"})
    odd["provision"] = dict(consent["provision"], period={"start": "2024-01-0\u00e9", "end": "2030"})
    write("operation_params", "provider-match-odd-period", bytes([1, 0]) + compact(params(
        {"name": "MemberBundle", "part": bundle["part"][:2] + [{"name": "Consent", "resource": odd}]})).encode())
    pdex = shared("pdex-2.2.0/provider-member-match-request.json")
    if pdex:
        write("operation_params", "pdex-2.2.0", bytes([1, 7]) + compact(pdex).encode())
    # op 2: export kick-off, `query\0body` (flags: 1 davinci, 2 not async, 4 lenient, 8 some scopes).
    write("operation_params", "export-query", bytes([2 + 3 * 1, 0]) + b"_type=Patient,Coverage,ExplanationOfBenefit&_since=2024-01-01T00:00:00Z&_typeFilter=ExplanationOfBenefit%3Fstatus%3Dactive\0")
    kickoff = params(
        {"name": "_type", "valueString": "Patient,Observation"},
        {"name": "_since", "valueInstant": "2024-01-01T00:00:00+05:00"},
        {"name": "_until", "valueInstant": "2025-01-01T00:00:00Z"},
        {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
        {"name": "exportType", "valueCode": "hl7.fhir.us.davinci-pdex#provider-delta"},
        {"name": "_typeFilter", "valueString": "Observation?code=http://loinc.org|4548-4"},
    )
    write("operation_params", "export-body", bytes([2 + 3 * 1, 0]) + b"\0" + compact(kickoff).encode())
    lenient = params({"name": "_type", "valueString": "Patient,Practitioner"}, {"name": "_elements", "valueString": "id"},
                     {"name": "_typeFilter", "valueString": "Patient?_count=1"})
    write("operation_params", "export-lenient", bytes([2 + 3 * 12, 9]) + b"\0" + compact(lenient).encode())
    atr = shared("pdex-2.2.0/CONSTRUCTED-davinci-data-export-kickoff-parameters.json")
    if atr:
        write("operation_params", "export-pdex", bytes([2 + 3 * 1, 0]) + b"\0" + compact(atr).encode())


def bundle(*resources, modes=None):
    entries = []
    for n, resource in enumerate(resources):
        entry = {"fullUrl": f"http://up:9000/fhir/{resource['resourceType']}/{resource.get('id', n)}", "resource": resource}
        entry["search"] = {"mode": (modes or {}).get(n, "match")}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries,
            "link": [{"relation": "self", "url": "http://up:9000/fhir/Observation?patient=p1"}]}


def group():
    return {"resourceType": "Group", "id": "g1", "type": "person", "actual": True, "quantity": 3,
            "managingEntity": {"reference": "Organization/org1"},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">p1, p3, p4</div>"},
            "member": [{"entity": {"reference": "Patient/p1"}, "period": {"start": "2024-01-01"}},
                       {"entity": {"reference": "http://up:9000/fhir/Patient/p3"}},
                       {"entity": {"reference": "Patient/p4"}, "inactive": False}]}


def response_chain():
    data = dataset()
    visible = [data[(t, True)] for t in ("Patient", "Observation", "Condition", "Coverage") if (t, True) in data]
    hidden = [data[(t, False)] for t in ("Patient", "Observation") if (t, False) in data]
    write("response_chain", "searchset", b"\x00" + compact(bundle(*visible)).encode())
    write("response_chain", "searchset-hidden", b"\x00" + compact(bundle(*(visible[:2] + hidden))).encode())
    if ("ExplanationOfBenefit", True) in data:
        eob = data[("ExplanationOfBenefit", True)]
        write("response_chain", "eob-money", b"\x00" + compact(bundle(eob, visible[0], modes={1: "include"})).encode())
    provenance = {"resourceType": "Provenance", "id": "prov-1", "target": [{"reference": "Observation/o9"}],
                  "recorded": "2024-01-01T00:00:00Z", "agent": [{"who": {"reference": "Organization/org1"}}]}
    contained = {"resourceType": "Observation", "id": "o2", "status": "final", "subject": {"reference": "Patient/p1"},
                 "contained": [{"resourceType": "Observation", "id": "c1", "subject": {"reference": "Patient/p4"}}],
                 "code": {"text": "x"}}
    write("response_chain", "group-provenance-contained", b"\x00" + compact(bundle(group(), provenance, contained)).encode())
    history = {"resourceType": "Bundle", "type": "history", "entry": [
        {"fullUrl": "http://up:9000/fhir/Patient/p1", "resource": visible[0],
         "request": {"method": "PUT", "url": "Patient/p1"},
         "response": {"status": "200 OK", "etag": "W/\"2\"", "lastModified": "2024-01-01T00:00:00Z"}},
        {"request": {"method": "DELETE", "url": "Patient/p1"}, "response": {"status": "204"}}]}
    write("response_chain", "history", b"\x01" + compact(history).encode())
    write("response_chain", "read-patient", b"\x02" + compact(visible[0]).encode())
    labelled = shared("security-labels/CONSTRUCTED-part2-labelled-condition.json")
    if labelled:
        text = compact(labelled)
        for old in ("Patient/example", "Patient/1"):
            text = text.replace(old, "Patient/p1")
        write("response_chain", "read-part2", b"\x02" + text.encode())
    tricky = '{"resourceType":"Observation","id":"o3","subject":{"refer\\u0065nce":"Patient/p4"},"note":[{"text":"http:\\/\\/up:9000\\/fhir\\/Patient/p1 \\"reference\\":\\"Patient/p4\\""}]}'
    write("response_chain", "read-escapes", b"\x02" + tricky.encode())
    write("response_chain", "duplicate-key", b"\x00" + b'{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"p1","id":"p4"}}]}')


def strict_json():
    data = dataset()
    seeds = {
        "patient": compact(data[("Patient", True)]),
        "bundle": compact(bundle(data[("Observation", True)])),
        "escapes": '{"a\\u0062":"\\ud83d\\ude00\\n\\"q\\"","\\/":[1,-0.5e+10,true,false,null,{}],"\u00e9":"\u2028"}',
        "duplicate-escaped": '{"ab":1,"a\\u0062":2}',
        "deep": "[" * 127 + "]" * 127,
        "numbers": '[0,-0,1e400,-1E-400,123456789012345678901234567890,0.1,1.7976931348623157e308]',
        "whitespace": ' \t\r\n{ "k" : [ ] , "l" : { } }\n',
        "bad": '{"a":1,}',
    }
    for name, text in seeds.items():
        write("strict_json", name, text)


def plugin_output():
    data = dataset()
    patient = compact(data[("Patient", True)])
    narrowed = dict(data[("Patient", True)])
    for key in ("address", "telecom", "birthDate"):
        narrowed.pop(key, None)
    # 0: original\0replacement text
    write("plugin_output", "replace-narrowing", b"\x00" + patient.encode() + b"\0" + compact(narrowed).encode())
    write("plugin_output", "replace-other-id", b"\x00" + patient.encode() + b"\0" + compact(dict(narrowed, id="p4")).encode())
    write("plugin_output", "replace-adds", b"\x00" + patient.encode() + b"\0" + compact(dict(narrowed, gender="unknown")).encode())
    write("plugin_output", "replace-not-object", b"\x00" + patient.encode() + b"\0[" + patient.encode() + b"]")
    write("plugin_output", "replace-duplicate-id", b"\x00" + patient.encode() + b'\0{"resourceType":"Patient","id":"p4","id":"p1"}')
    # 1: original\0edits (kind, where)
    observation = compact(data[("Observation", True)])
    write("plugin_output", "edit-removals", b"\x01" + observation.encode() + b"\0" + bytes([0, 3, 0, 7, 3, 2]))
    write("plugin_output", "edit-alter", b"\x01" + observation.encode() + b"\0" + bytes([0, 5, 1, 9]))
    # 2: offered ids then a matcher's answer (arbitrary).
    def offered(a, ids):
        for i in ids:
            a.bool(True).text(i)
        return a.bool(False)
    a = offered(Arbitrary().u8(2), ["pat-0001", "pat-0002"]).variant(0, 3).text("pat-0001")
    a.front += struct.pack("<d", 0.93)
    write("plugin_output", "match-offered", a.bool(True).text("identifier").bool(False).build())
    a = offered(Arbitrary().u8(2), ["pat-0001"]).variant(0, 3).text("pat-9999")
    a.front += struct.pack("<d", 1.0)
    write("plugin_output", "match-not-offered", a.bool(False).build())
    a = offered(Arbitrary().u8(2), ["a", "b"]).variant(2, 3).bool(True).text("b").bool(True).text("zz").bool(False)
    write("plugin_output", "ambiguous", a.bool(True).text("tie \u00e9").bool(False).build())
    # 3: resources then verdicts (arbitrary).
    a = Arbitrary().u8(3).bool(True).text('{"resourceType":"Observation","id":"o1"}').bool(True).text('{"id":"o2"}').bool(False)
    write("plugin_output", "verdicts", a.bool(True).variant(2, 3).text('{"resourceType":"Observation","id":"o1"}').bool(True).variant(1, 3).bool(False).build())


def main():
    # Inputs that once found a bug (`crash-*`, minimised) stay as regressions.
    for old in CORPUS.rglob("*"):
        if old.is_file() and not old.name.startswith("crash-"):
            old.unlink()
    for make in (parse_request, search_params, client_assertion, operation_params, response_chain, strict_json, plugin_output):
        make()
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())
    print(f"{len(files)} seeds, {sum(p.stat().st_size for p in files)} bytes in {CORPUS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
