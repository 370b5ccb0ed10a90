#!/usr/bin/env python3
"""Deterministic member population and perturbed provider-side $member-match
queries for the matching-quality benchmark (BENCHMARKS.md "Plugins and
matching").

    python3 bench/member-match/generate.py [--members 100000] [--queries 20000] [--out DIR]

Writes DIR/members.ndjson (FHIR Patient + Coverage lines), DIR/queries.ndjson
(HRex $member-match Parameters, each with an `id`) and DIR/truth.ndjson
({"id", "member": "Patient/…" or null, "kind"}). Same seed, same files.

Population: households (subscriber, spouse, children; about 2% of births
are twins) with realistic US names drawn by frequency (Hispanic names with
diacritics, hyphenated family names, apostrophes, Vietnamese and other
frequent surnames), birth dates 1935-2023, Rhode Island-style addresses.

Queries, each perturbed the way provider systems differ from the payer's
record: exact; no card; middle name typed into family; given and family
swapped; nickname; one typo; birth date off by one day or day/month swapped;
subscriber/member id formatting; moved address; twins; and look-alike
non-members (same family name and similar given name or birth date, not in
the plan), which must never match.
"""
import argparse
import json
import os
import random

SEED = 20270107
FEMALE = """Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty Margaret Sandra
Ashley Kimberly Emily Donna Michelle Carol Amanda Dorothy Melissa Deborah Stephanie Rebecca Sharon Laura Cynthia Kathleen
Amy Angela Shirley Anna Brenda Pamela Emma Nicole Helen Samantha Katherine Christine Debra Rachel Carolyn Janet Catherine
Maria Heather Diane Ruth Julie Olivia Joyce Virginia Victoria Kelly Lauren Christina Joan Evelyn Judith Megan Andrea
Cheryl Hannah Jacqueline Martha Gloria Teresa Ann Sara Madison Frances Kathryn Janice Jean Abigail Alice Judy Sophia
Grace Denise Amber Doris Marilyn Danielle Beverly Isabella Theresa Diana Natalie Brittany Charlotte Marie Kayla Alexis
Lori Guadalupe Lucía Sofía Valentina Ximena Camila Renée Zoë Chloé Linh Thao Mai Hoa Priya Ananya Mei Yuna Aaliyah Imani""".split()
MALE = """James Robert John Michael David William Richard Joseph Thomas Charles Christopher Daniel Matthew Anthony Mark
Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy Ronald Edward Jason Jeffrey Ryan Jacob Gary Nicholas
Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin Samuel Gregory Alexander Frank Patrick Raymond Jack Dennis
Jerry Tyler Aaron Jose Adam Nathan Henry Douglas Zachary Peter Kyle Ethan Walter Noah Jeremy Christian Keith Roger Terry
Gerald Harold Sean Austin Carl Arthur Lawrence Dylan Jesse Jordan Bryan Billy Joe Bruce Gabriel Logan Albert Willie
Alan Juan Wayne Elijah Randy Roy Vincent Ralph Eugene Russell Bobby Mason Philip Louis José Jesús Andrés Martín Ramón
Nicolás Joaquín Sebastián Minh Tuan Duc Huy Arjun Rohan Wei Hiroshi Kwame Malik Darnell""".split()
SURNAMES = """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson
Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis Robinson Walker
Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter
Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers
Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood
James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins
Perry Russell Sullivan Bell Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson
Alexander Hamilton Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar
Stevens Murray Ford Castro Marshall Owens Harrison Fernandez McDonald Woods Washington Kennedy Wells Vargas Henry Chen
Freeman Webb Tucker Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon Muñoz
Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice Schmidt García
Núñez Peña Ibáñez Beltrán Cortés Pham Le Huynh Vo Dang Bui Do Ho Ngo Duong O'Brien O'Connor D'Angelo McCarthy Okonkwo
Adeyemi Nakamura Tanaka Yamamoto Kowalski Nowak Novák Müller Schröder Søren Østergaard Zhang Wang Liu Singh Kaur Shah""".split()
STREETS = "Main Oak Pine Maple Cedar Elm Washington Lake Hill Park Linden Quarry River Church Spring Union".split()
ZIPS = ["02%03d" % z for z in range(801, 999, 3)]
NICK = {"William": "Bill", "Robert": "Bob", "Richard": "Rick", "James": "Jim", "John": "Jack", "Joseph": "Joe",
        "Michael": "Mike", "Thomas": "Tom", "Charles": "Chuck", "Christopher": "Chris", "Daniel": "Dan",
        "Matthew": "Matt", "Anthony": "Tony", "Andrew": "Andy", "David": "Dave", "Steven": "Steve",
        "Edward": "Ed", "Benjamin": "Ben", "Samuel": "Sam", "Alexander": "Alex", "Nicholas": "Nick",
        "Timothy": "Tim", "Gregory": "Greg", "Patrick": "Pat", "Kenneth": "Ken", "Elizabeth": "Liz",
        "Margaret": "Peggy", "Katherine": "Kate", "Jennifer": "Jen", "Jessica": "Jess", "Patricia": "Trish",
        "Barbara": "Barb", "Susan": "Sue", "Deborah": "Debbie", "Rebecca": "Becky", "Victoria": "Vicky",
        "Christina": "Tina", "Abigail": "Abby", "Samantha": "Sam", "Kimberly": "Kim", "Pamela": "Pam",
        "Judith": "Judy", "Cynthia": "Cindy", "Amanda": "Mandy", "Stephanie": "Steph", "Jose": "Pepe",
        "Jacqueline": "Jackie", "Dorothy": "Dottie", "Theresa": "Tess", "Lawrence": "Larry", "Gerald": "Jerry",
        "Jeffrey": "Jeff", "Raymond": "Ray", "Ronald": "Ron", "Donald": "Don", "Zachary": "Zach"}
ASCII = str.maketrans("áéíóúñüçÁÉÍÓÚÑÜøØöäÖÄ", "aeiounucAEIOUNUoOoaOA")

rng = random.Random(SEED)


def zipf(items, s=1.07):
    weights = [1.0 / (i + 1) ** s for i in range(len(items))]
    return lambda: rng.choices(items, weights)[0]


pick_f, pick_m, pick_s = zipf(FEMALE, 0.8), zipf(MALE, 0.8), zipf(SURNAMES, 0.9)


def date(lo, hi):
    y = rng.randint(lo, hi)
    m = rng.randint(1, 12)
    d = rng.randint(1, 28 if m == 2 else (30 if m in (4, 6, 9, 11) else 31))
    return "%04d-%02d-%02d" % (y, m, d)


def family_name():
    if rng.random() < 0.04:
        a, b = pick_s(), pick_s()
        if a != b:
            return a + "-" + b
    return pick_s()


def person(gender, family, birth):
    first = pick_f() if gender == "female" else pick_m()
    middle = (pick_f() if gender == "female" else pick_m()) if rng.random() < 0.5 else None
    given = [first] + ([middle] if middle and middle != first else [])
    return {"gender": gender, "family": family, "given": given, "birthDate": birth}


def build(n_members):
    members = []
    sub_no = 1000000
    while len(members) < n_members:
        sub_no += rng.randint(1, 7)
        sub_id = "FW%07d" % sub_no
        fam = family_name()
        zipc = rng.choice(ZIPS)
        street = "%d %s %s" % (rng.randint(1, 9999), rng.choice(STREETS), rng.choice(["St", "Ave", "Rd", "Ln"]))
        g = rng.choice(["female", "male"])
        adult_birth = date(1935, 2000)
        household = [dict(person(g, fam, adult_birth), rel="self")]
        if rng.random() < 0.55:
            spouse_fam = fam if rng.random() < 0.7 else family_name()
            household.append(dict(person("male" if g == "female" else "female", spouse_fam, date(1935, 2002)), rel="spouse"))
        y0 = int(adult_birth[:4])
        for _ in range(rng.choice([0, 0, 1, 1, 2, 2, 3, 4])):
            b = date(min(y0 + 18, 2023), min(y0 + 45, 2023))
            household.append(dict(person(rng.choice(["female", "male"]), fam, b), rel="child"))
            if rng.random() < 0.02:  # twins: same birth date, different given name
                household.append(dict(person(rng.choice(["female", "male"]), fam, b), rel="child", twin=True))
        for k, p in enumerate(household, start=1):
            pid = "m%06d" % len(members)
            p.update(id=pid, member_id="%s-%02d" % (sub_id, k), subscriber_id=sub_id, zip=zipc, street=street,
                     subscriber=household[0].get("id", pid))
            members.append(p)
    return members[:n_members]


def patient_json(p):
    return {"resourceType": "Patient", "id": p["id"],
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]},
                            "system": "http://example.org/fhirwall/member-id", "value": p["member_id"]}],
            "name": [{"use": "official", "family": p["family"], "given": p["given"]}],
            "gender": p["gender"], "birthDate": p["birthDate"],
            "address": [{"use": "home", "line": [p["street"]], "city": "Providence", "state": "RI", "postalCode": p["zip"]}]}


def coverage_json(p):
    return {"resourceType": "Coverage", "id": "cov-" + p["id"], "status": "active",
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]},
                            "system": "http://example.org/fhirwall/member-id", "value": p["member_id"]}],
            "subscriber": {"reference": "Patient/" + p["subscriber"]}, "subscriberId": p["subscriber_id"],
            "beneficiary": {"reference": "Patient/" + p["id"]},
            "relationship": {"coding": [{"code": p["rel"]}]},
            "payor": [{"reference": "Organization/org-payer"}]}


def typo(word):
    letters = [c for c in word]
    if len(letters) < 4:
        return word + "e"
    i = rng.randint(1, len(letters) - 2)
    kind = rng.choice(["swap", "drop", "sub"])
    if kind == "swap":
        letters[i], letters[i + 1] = letters[i + 1], letters[i]
    elif kind == "drop":
        del letters[i]
    else:
        letters[i] = rng.choice("aeioulnrst".replace(letters[i].lower(), ""))
    out = "".join(letters)
    return out if out != word else word + "e"


def shift_day(d, delta):
    import datetime
    x = datetime.date.fromisoformat(d) + datetime.timedelta(days=delta)
    return x.isoformat()


def query(qid, name_family, given, birth, gender, card, zipc):
    patient = {"resourceType": "Patient", "id": "1", "name": [{"family": name_family, "given": given}],
               "gender": gender, "birthDate": birth, "address": [{"postalCode": zipc}]}
    cov = {"resourceType": "Coverage", "id": "card", "status": "active", "beneficiary": {"reference": "Patient/1"},
           "payor": [{"display": "Fhirwall Example Health Plan"}]}
    if card is not None:
        cov["subscriberId"] = card
    return {"resourceType": "Parameters", "id": qid, "parameter": [
        {"name": "MemberPatient", "resource": patient}, {"name": "CoverageToMatch", "resource": cov}]}


def card_for(p, style):
    if style == "member":
        return p["member_id"]
    if style == "subscriber":
        return p["subscriber_id"]
    if style == "lower":
        return p["member_id"].lower()
    if style == "spaced":
        return p["member_id"].replace("-", " ")
    if style == "bare":
        return p["member_id"].replace("-", "")
    return None


KINDS = ["exact", "no-card", "middle-in-family", "swapped-names", "nickname", "typo", "dob-off-by-one",
         "dob-day-month-swapped", "id-format", "moved", "twin", "lookalike", "lookalike-no-card", "nickname+moved"]


def make_queries(members, n):
    twins = [p for p in members if p.get("twin")]
    by_key = {}
    for p in members:
        by_key.setdefault((p["family"], p["birthDate"]), []).append(p)
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        qid = "q%06d" % i
        p = rng.choice(twins) if kind == "twin" and twins else rng.choice(members)
        fam, given, birth, zipc = p["family"], list(p["given"]), p["birthDate"], p["zip"]
        card = card_for(p, rng.choice(["member", "member", "subscriber"]))
        truth = p["id"]
        if kind == "no-card":
            card = None
        elif kind == "middle-in-family":
            if len(given) < 2:
                given.append(pick_f() if p["gender"] == "female" else pick_m())
            fam = given[1] + " " + fam
            given = given[:1]
        elif kind == "swapped-names":
            fam, given = given[0], [fam]
        elif kind in ("nickname", "nickname+moved"):
            given[0] = NICK.get(given[0].translate(ASCII), given[0])
            if kind == "nickname+moved":
                zipc = rng.choice(ZIPS)
        elif kind == "typo":
            if rng.random() < 0.5:
                fam = typo(fam)
            else:
                given[0] = typo(given[0])
        elif kind == "dob-off-by-one":
            birth = shift_day(birth, rng.choice([-1, 1]))
        elif kind == "dob-day-month-swapped":
            y, m, d = birth.split("-")
            if int(d) <= 12 and d != m:
                birth = "%s-%s-%s" % (y, d, m)
        elif kind == "id-format":
            card = card_for(p, rng.choice(["lower", "spaced", "bare"]))
        elif kind == "moved":
            zipc = rng.choice(ZIPS)
        elif kind in ("lookalike", "lookalike-no-card"):
            # Someone outside the plan who resembles a member: same family
            # name, a different given name or birth date, their own card.
            truth = None
            if rng.random() < 0.5:
                given = [pick_f() if p["gender"] == "female" else pick_m()]
                if given[0] == p["given"][0]:
                    given = [given[0] + "a"]
            else:
                birth = shift_day(birth, rng.choice([-1, 1]) * rng.randint(400, 9000))
            card = None if kind == "lookalike-no-card" else "XH%07d" % rng.randint(0, 9999999)
            # A look-alike that is in fact identical to a member is a member.
            for other in by_key.get((fam, birth), []):
                if other["given"][0] == given[0]:
                    truth = other["id"]
        out.append((query(qid, fam, given, birth, p["gender"], card, zipc), {"id": qid, "member": truth and "Patient/" + truth, "kind": kind}))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=100000)
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    members = build(args.members)
    with open(os.path.join(args.out, "members.ndjson"), "w") as f:
        for p in members:
            f.write(json.dumps(patient_json(p), ensure_ascii=False, separators=(",", ":")) + "\n")
            f.write(json.dumps(coverage_json(p), ensure_ascii=False, separators=(",", ":")) + "\n")
    qs = make_queries(members, args.queries)
    with open(os.path.join(args.out, "queries.ndjson"), "w") as f, open(os.path.join(args.out, "truth.ndjson"), "w") as t:
        for q, truth in qs:
            f.write(json.dumps(q, ensure_ascii=False, separators=(",", ":")) + "\n")
            t.write(json.dumps(truth) + "\n")
    print("%d members, %d twins, %d queries -> %s" % (len(members), sum(1 for p in members if p.get("twin")), len(qs), args.out))


if __name__ == "__main__":
    main()
