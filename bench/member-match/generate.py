#!/usr/bin/env python3
"""Deterministic member population and perturbed provider-side $member-match
queries for the matching-quality benchmark (BENCHMARKS.md "Matching quality
of the default matcher").

    python3 bench/member-match/generate.py [--members 100000] [--queries 20000] [--seed N] [--out DIR]

Writes DIR/members.ndjson (FHIR Patient + Coverage lines), DIR/queries.ndjson
(HRex $member-match Parameters, each with an `id`) and DIR/truth.ndjson (one
line per query: {"id", "member": "Patient/…" or null, "kind", "id_cond",
"perturbations": [...], "contact": [...]}). Same seed, same files.

Population: households (subscriber, spouse, children; about 2% of births are
twins, some sons named after their father: Jr/Sr) in Rhode Island towns,
with names drawn by frequency (Hispanic names with diacritics, hyphenated
family names, apostrophes, Vietnamese and other frequent surnames, and a
long tail of rarer surnames: the most frequent, Smith, is about 2% of
members), a household address, home phone for some households, a cell phone
and an e-mail address for most adults (children's records often carry a
parent's phone or e-mail, as payers' records do), maiden names recorded for
some married members.

Queries (what a provider's EHR sends), on three independent axes:

- the card (`id_cond`): the member id or the subscriber id, as printed or
  formatted differently (lower case, spaces, no dash); or no usable id:
  none, mistyped (one character substituted or two transposed), or another
  payer's id (other formats);
- the demographics sent (`contact`): a full address about 85% of the time,
  a phone about 70%, an e-mail about 40%, gender about 95%;
- 0 to 3 perturbations of what the payer has: nickname, one typo (family or
  given), birth date off by one day or day/month swapped, given and family
  swapped, middle name typed into family, moved (new address; often a new
  phone), surname change on marriage (the provider has the new name and the
  payer the old one or the reverse; the old name sometimes sent as a second
  HumanName use=old/maiden), diacritics dropped or added. About half the
  queries carry two or three, including the combinations providers produce
  (nickname + moved, typo + day/month swap, marriage + moved, ...).

Target people (`kind`): members (any member; a twin whose twin is also a
member; a Jr or Sr whose namesake is also a member), and non-members whose
right answer is no match: a spouse or child in a member's household who is
not covered (same address, phone, family name, sometimes the household's
subscriber id on the card), the uncovered twin of a member (same birth date,
differs by given name), the uncovered Jr or Sr of a member (same name,
other birth date), someone elsewhere with the same name, birth date and
gender as a member (different address, phone, e-mail; no card or another
payer's), and the original look-alikes (same family name, other given name
or birth date).
"""
import argparse
import datetime
import json
import os
import random

DEFAULT_SEED = 20270107
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
# The long tail: rarer surnames, built from common English/European parts.
TAIL_HEADS = """Har Brock Whit Ash Cal Dun Fair Gold Hol Kings Lang Mar Nor Pen Red Stan Thorn Wes Al Bar Car Dal El Fen
Gar Hal Kel Lin Mor Os Pres Rad Sel Tal Ver Wil Yar Zel Bel Cor Bram Chad Dor Eg Farn Glen Hart Kirk Lock Med""".split()
TAIL_TAILS = """well man ton ford ley son field wood by stead worth ridge more wick ham er ing sky ski ez ini elli ov berg
stein sen strom quist ard eau""".split()
TAIL = [h + t for h in TAIL_HEADS for t in TAIL_TAILS]
STREETS = """Main Oak Pine Maple Cedar Elm Washington Lake Hill Park Linden Quarry River Church Spring Union Broad Chestnut
Walnut Highland Prospect Franklin Pleasant Mill School Center Academy Angell Benefit Hope Power Waterman Wickenden Smith
Atwells Cranston Elmwood Manton Douglas Chalkstone Admiral Branch Charles Cole Knight Greenwich Post Warwick Narragansett
Ocean Bay Harbor Meadow Orchard Sycamore Willow Birch Laurel""".split()
STREET_TYPES = [("St", "Street"), ("Ave", "Avenue"), ("Rd", "Road"), ("Ln", "Lane"), ("Dr", "Drive"), ("Ct", "Court"),
                ("Pl", "Place"), ("Blvd", "Boulevard")]
# Rhode Island towns, their ZIP codes and rough weights (population).
TOWNS = [("Providence", ["02903", "02904", "02905", "02906", "02907", "02908", "02909"], 19),
         ("Warwick", ["02886", "02888", "02889"], 8), ("Cranston", ["02910", "02920", "02921"], 8),
         ("Pawtucket", ["02860", "02861"], 7), ("East Providence", ["02914", "02915", "02916"], 5),
         ("Woonsocket", ["02895"], 4), ("Coventry", ["02816"], 3), ("Cumberland", ["02864"], 3),
         ("North Providence", ["02911"], 3), ("South Kingstown", ["02879"], 3), ("West Warwick", ["02893"], 3),
         ("Johnston", ["02919"], 3), ("North Kingstown", ["02852"], 3), ("Newport", ["02840"], 2),
         ("Bristol", ["02809"], 2), ("Westerly", ["02891"], 2), ("Smithfield", ["02917"], 2), ("Lincoln", ["02865"], 2),
         ("Central Falls", ["02863"], 2), ("Portsmouth", ["02871"], 2), ("Barrington", ["02806"], 2),
         ("Middletown", ["02842"], 2), ("Burrillville", ["02830"], 1), ("Narragansett", ["02882"], 1),
         ("Tiverton", ["02878"], 1), ("East Greenwich", ["02818"], 1), ("Scituate", ["02857"], 1), ("Warren", ["02885"], 1)]
ELSEWHERE = [("Fall River", "MA", "02720"), ("Attleboro", "MA", "02703"), ("Boston", "MA", "02118"),
             ("Worcester", "MA", "01604"), ("Norwich", "CT", "06360"), ("Hartford", "CT", "06106"),
             ("New Haven", "CT", "06511"), ("Brooklyn", "NY", "11215")]
TOWN_CUM = [sum(t[2] for t in TOWNS[: i + 1]) for i in range(len(TOWNS))]
MAIL = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "aol.com", "icloud.com", "cox.net", "verizon.net"]
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
ASCII = str.maketrans("áéíóúñüçÁÉÍÓÚÑÜøØöäÖÄåÅ", "aeiounucAEIOUNUoOoaOAaA")
ACCENT = {"Jose": "José", "Maria": "María", "Lucia": "Lucía", "Sofia": "Sofía", "Jesus": "Jesús", "Andres": "Andrés",
          "Martin": "Martín", "Ramon": "Ramón", "Nicolas": "Nicolás", "Joaquin": "Joaquín", "Sebastian": "Sebastián",
          "Garcia": "García", "Munoz": "Muñoz", "Nunez": "Núñez", "Pena": "Peña", "Ibanez": "Ibáñez",
          "Beltran": "Beltrán", "Cortes": "Cortés", "Ramirez": "Ramírez", "Gonzalez": "González",
          "Rodriguez": "Rodríguez", "Martinez": "Martínez", "Hernandez": "Hernández", "Lopez": "López",
          "Perez": "Pérez", "Sanchez": "Sánchez", "Gomez": "Gómez", "Diaz": "Díaz", "Jimenez": "Jiménez",
          "Alvarez": "Álvarez", "Fernandez": "Fernández", "Vasquez": "Vásquez", "Gutierrez": "Gutiérrez",
          "Mendez": "Méndez", "Chavez": "Chávez", "Ruiz": "Ruíz", "Renee": "Renée", "Zoe": "Zoë", "Chloe": "Chloé",
          "Ximena": "Xiména"}
OTHER_PAYERS = ["Blue Cross Blue Shield of Rhode Island", "Neighborhood Health Plan", "UnitedHealthcare",
                "Tufts Health Plan", "Medicare"]

rng = random.Random(DEFAULT_SEED)


def zipf(items, s):
    cum, total = [], 0.0
    for i in range(len(items)):
        total += 1.0 / (i + 1) ** s
        cum.append(total)
    return lambda: rng.choices(items, cum_weights=cum)[0]


pick_f = pick_m = pick_common = None


def pick_s():
    # About 30% of people carry one of the ~240 frequent surnames (zipf), the
    # rest a rarer one: Smith ends up near 2% of members, as in US data.
    return pick_common() if rng.random() < 0.3 else rng.choice(TAIL)


def date(lo, hi):
    y = rng.randint(lo, hi)
    m = rng.randint(1, 12)
    d = rng.randint(1, 28 if m == 2 else (30 if m in (4, 6, 9, 11) else 31))
    return "%04d-%02d-%02d" % (y, m, d)


def shift_day(d, delta):
    return (datetime.date.fromisoformat(d) + datetime.timedelta(days=delta)).isoformat()


def family_name():
    if rng.random() < 0.04:
        a, b = pick_s(), pick_s()
        if a != b:
            return a + "-" + b
    return pick_s()


def plain(name):
    return name.translate(ASCII).lower()


# Given-name equivalents (the default matcher's nickname groups, plus the
# NICK pairs above): a family does not give two children names of one group,
# and a look-alike's "other" given name is never one of the member's.
GIVEN_GROUPS = [line.split() for line in """
william bill billy will willy liam
robert bob bobby rob robbie bert
richard rick ricky dick rich richie
james jim jimmy jamie
john jack johnny jon
joseph joe joey
michael mike mikey mick
thomas tom tommy
charles charlie chuck chas
christopher chris topher
daniel dan danny
matthew matt matty
anthony tony
andrew andy drew
joshua josh
david dave davey
steven steve stevie stephen
edward ed eddie ted teddy ned
benjamin ben benny
samuel sam sammy
alexander alex xander sandy
nicholas nick nicky
jonathan jon jonny
timothy tim timmy
gregory greg
patrick pat paddy
peter pete
raymond ray
ronald ron ronnie
donald don donnie
kenneth ken kenny
lawrence larry
gerald jerry
jeffrey jeff
frederick fred freddie
francis frank frankie
henry hank harry
walter walt
eugene gene
vincent vince vinny
zachary zach zack
nathaniel nate nathan
elizabeth liz lizzie beth betty eliza betsy libby
margaret maggie meg peggy marge margie
katherine kate katie kathy kat kitty catherine kathryn cathy
jennifer jen jenny
jessica jess jessie
patricia pat patty tricia trish
barbara barb barbie
susan sue suzy susie
deborah deb debbie debra
rebecca becky becca
victoria vicky tori
christina chris tina christine chrissy
abigail abby
samantha sam sammy
alexandra alex alexa sandy
jacqueline jackie
kimberly kim
pamela pam
dorothy dot dottie
judith judy
theresa teresa terry tess
cynthia cindy
amanda mandy
melissa missy mel
stephanie steph
nancy nan
frances fran frannie
josephine jo josie
eleanor ellie nora ella
caroline carol carrie
mary molly polly mae mamie
ann anne anna annie
jose pepe
francisco paco pancho
guillermo memo
alejandro alejo
roberto beto
eduardo lalo
ignacio nacho
dolores lola
guadalupe lupe
concepcion concha
mercedes meche
""".strip().splitlines()] + [[f.lower(), n.lower()] for f, n in NICK.items()]
NICK_GROUP = {}
for _group in GIVEN_GROUPS:
    for _name in _group:
        NICK_GROUP.setdefault(_name, set()).update(_group)


def similar_given(a, b):
    """Names a family would not give two children at once (same start,
    same nickname group, one letter apart)."""
    a, b = plain(a), plain(b)
    if a == b or a[:3] == b[:3] or b in NICK_GROUP.get(a, ()):
        return True
    return abs(len(a) - len(b)) <= 1 and sum(x != y for x, y in zip(a, b)) <= 1


def first_name(gender, avoid=()):
    for _ in range(50):
        n = pick_f() if gender == "female" else pick_m()
        if not any(similar_given(n, x) for x in avoid):
            return n
    return n


def person(gender, family, birth, avoid=()):
    first = first_name(gender, avoid)
    middle = (pick_f() if gender == "female" else pick_m()) if rng.random() < 0.5 else None
    given = [first] + ([middle] if middle and middle != first else [])
    return {"gender": gender, "family": family, "given": given, "birthDate": birth}


def phone():
    area = "401" if rng.random() < 0.9 else rng.choice(["508", "774", "860", "617"])
    return "%s%03d%04d" % (area, rng.randint(200, 989), rng.randint(0, 9999))


def email(given, family):
    g, f = plain(given).replace(" ", ""), plain(family).replace(" ", "").replace("-", "").replace("'", "")
    style = rng.randint(0, 3)
    local = [g + "." + f, g[0] + f, f + g[:3], g + f[:1]][style]
    if rng.random() < 0.6:
        local += str(rng.randint(1, 99))
    return local + "@" + rng.choice(MAIL)


def address():
    town, zips, _ = rng.choices(TOWNS, cum_weights=TOWN_CUM)[0]
    street = "%d %s %s" % (rng.randint(1, 2999), rng.choice(STREETS), rng.choice(STREET_TYPES)[0])
    unit = ("Apt %d" % rng.randint(1, 40)) if rng.random() < 0.2 else None
    return {"line": street, "unit": unit, "city": town, "state": "RI", "zip": rng.choice(zips)}


def address_elsewhere():
    if rng.random() < 0.5:
        town, state, zipc = rng.choice(ELSEWHERE)
        a = {"line": "%d %s %s" % (rng.randint(1, 2999), rng.choice(STREETS), rng.choice(STREET_TYPES)[0]),
             "unit": None, "city": town, "state": state, "zip": zipc}
        return a
    return address()


def build(n_members):
    members = []
    sub_no = 1000000
    while len(members) < n_members:
        sub_no += rng.randint(1, 7)
        sub_id = "FW%07d" % sub_no
        fam = family_name()
        addr = address()
        home = phone() if rng.random() < 0.35 else None
        g = rng.choice(["female", "male"])
        adult_birth = date(1935, 2000)
        household = [dict(person(g, fam, adult_birth), rel="self")]
        if rng.random() < 0.55:
            sg = "male" if g == "female" else "female"
            took_name = rng.random() < 0.7
            spouse = dict(person(sg, fam if took_name else family_name(), date(1935, 2002), avoid=[household[0]["given"][0]]),
                          rel="spouse")
            if took_name and rng.random() < 0.4:
                spouse["maiden"] = family_name()
            household.append(spouse)
        y0 = int(adult_birth[:4])
        father = next((p for p in household if p["gender"] == "male"), None)
        for _ in range(rng.choice([0, 0, 1, 1, 2, 2, 3, 4])):
            b = date(min(y0 + 18, 2023), min(y0 + 45, 2023))
            names = [p["given"][0] for p in household]
            gender = rng.choice(["female", "male"])
            child = dict(person(gender, fam, b, avoid=names), rel="child")
            if gender == "male" and father and not father.get("senior") and rng.random() < 0.06:
                # A son named after his father: Jr / Sr.
                child["given"] = list(father["given"])
                child["junior"] = True
                father["senior"] = True
                child["suffix"] = "Jr" if rng.random() < 0.6 else None
                father["suffix"] = "Sr" if rng.random() < 0.4 else None
            household.append(child)
            if rng.random() < 0.02:  # twins: same birth date, a dissimilar given name
                names.append(child["given"][0])
                household.append(dict(person(rng.choice(["female", "male"]), fam, b, avoid=names), rel="child",
                                      twin=True))
                child["twin"] = True
        adults = [p for p in household if p["rel"] in ("self", "spouse")]
        for p in adults:
            p["cell"] = phone() if rng.random() < 0.85 else None
            p["email"] = email(p["given"][0], p["family"]) if rng.random() < 0.7 else None
        guardian = adults[0]
        for p in household:
            if p["rel"] != "child":
                continue
            age = 2026 - int(p["birthDate"][:4])
            p["cell"] = phone() if age >= 14 and rng.random() < 0.5 else None
            p["email"] = email(p["given"][0], p["family"]) if age >= 16 and rng.random() < 0.3 else None
            # The payer's record of a child often carries a parent's contact.
            p["parent_phone"] = guardian.get("cell") if rng.random() < 0.6 else None
            p["parent_email"] = guardian.get("email") if p["email"] is None and rng.random() < 0.25 else None
        start = len(members)
        for k, p in enumerate(household, start=1):
            pid = "m%06d" % (start + k - 1)
            p.update(id=pid, member_id="%s-%02d" % (sub_id, k), subscriber_id=sub_id, addr=addr, home=home,
                     subscriber="m%06d" % start, household=start)
            members.append(p)
    return members[:n_members]


def telecoms(p):
    out = []
    if p.get("home"):
        out.append({"system": "phone", "value": fmt_phone(p["home"], 0), "use": "home"})
    if p.get("cell"):
        out.append({"system": "phone", "value": fmt_phone(p["cell"], 0), "use": "mobile"})
    elif p.get("parent_phone"):
        out.append({"system": "phone", "value": fmt_phone(p["parent_phone"], 0), "use": "mobile"})
    if p.get("email"):
        out.append({"system": "email", "value": p["email"]})
    elif p.get("parent_email"):
        out.append({"system": "email", "value": p["parent_email"]})
    return out


def fhir_address(a, style=0):
    line = a["line"]
    if style == 1:  # spelled out street type, upper case
        for short, long in STREET_TYPES:
            if line.endswith(" " + short):
                line = line[: -len(short)] + long
        line = line.upper()
    lines = [line] + ([a["unit"]] if a.get("unit") else [])
    if style == 2 and a.get("unit"):
        lines = [line + ", " + a["unit"].replace("Apt ", "#")]
    return {"use": "home", "line": lines, "city": a["city"], "state": a["state"], "postalCode": a["zip"]}


def patient_json(p):
    name = {"use": "official", "family": p["family"], "given": p["given"]}
    if p.get("suffix"):
        name["suffix"] = [p["suffix"]]
    names = [name]
    if p.get("maiden"):
        names.append({"use": "maiden", "family": p["maiden"], "given": p["given"][:1]})
    out = {"resourceType": "Patient", "id": p["id"],
           "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]},
                           "system": "http://example.org/fhirwall/member-id", "value": p["member_id"]}],
           "name": names}
    tel = telecoms(p)
    if tel:
        out["telecom"] = tel
    out.update({"gender": p["gender"], "birthDate": p["birthDate"], "address": [fhir_address(p["addr"])]})
    return out


def coverage_json(p):
    return {"resourceType": "Coverage", "id": "cov-" + p["id"], "status": "active",
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]},
                            "system": "http://example.org/fhirwall/member-id", "value": p["member_id"]}],
            "subscriber": {"reference": "Patient/" + p["subscriber"]}, "subscriberId": p["subscriber_id"],
            "beneficiary": {"reference": "Patient/" + p["id"]},
            "relationship": {"coding": [{"code": p["rel"]}]},
            "payor": [{"reference": "Organization/org-payer"}]}


def fmt_phone(digits, style):
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return ["%s-%s-%s" % (a, b, c), "(%s) %s-%s" % (a, b, c), digits, "+1 %s %s %s" % (a, b, c),
            "%s.%s.%s" % (a, b, c)][style]


def typo(word):
    letters = list(word)
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


def mistype_id(value):
    """One character substituted or two adjacent ones transposed (never the
    formatting): what a person copying a card gets wrong."""
    chars = list(value)
    pos = [i for i, c in enumerate(chars) if c.isalnum()]
    for _ in range(20):
        if rng.random() < 0.5:
            i = rng.choice(pos[2:])  # a digit
            chars2 = list(chars)
            chars2[i] = rng.choice([d for d in "0123456789" if d != chars[i]])
        else:
            k = rng.randint(2, len(pos) - 2)
            i, j = pos[k], pos[k + 1]
            chars2 = list(chars)
            chars2[i], chars2[j] = chars2[j], chars2[i]
        out = "".join(chars2)
        if out != value:
            return out
    return value + "1"


def other_payer_id():
    kind = rng.randint(0, 4)
    if kind == 0:  # Medicare Beneficiary Identifier shape
        L = "ACDEFGHJKMNPQRTUVWXY"
        return "%d%s%s%d%s%s%d%s%s%d%d" % (rng.randint(1, 9), rng.choice(L), rng.choice(L + "0123456789"),
                                           rng.randint(0, 9), rng.choice(L), rng.choice(L + "0123456789"),
                                           rng.randint(0, 9), rng.choice(L), rng.choice(L), rng.randint(0, 9),
                                           rng.randint(0, 9))
    if kind == 1:
        return "W%09d" % rng.randint(0, 999999999)
    if kind == 2:
        return "ZGP%09d" % rng.randint(0, 999999999)
    if kind == 3:
        return "XH%07d" % rng.randint(0, 9999999)
    return "%03d-%02d-%04d-%02d" % (rng.randint(100, 999), rng.randint(0, 99), rng.randint(0, 9999), rng.randint(1, 9))


ID_CONDS = [("member-id", 30), ("subscriber-id", 17), ("id-format", 13), ("none", 16), ("mistyped", 12),
            ("other-payer", 12)]
NO_USABLE_ID = ("none", "mistyped", "other-payer")


def card_for(p, cond):
    if cond == "member-id":
        return p["member_id"], None
    if cond == "subscriber-id":
        return p["subscriber_id"], None
    if cond == "id-format":
        base = p["member_id"] if rng.random() < 0.7 else p["subscriber_id"]
        style = rng.randint(0, 2)
        return [base.lower(), base.replace("-", " "), base.replace("-", "")][style], None
    if cond == "mistyped":
        base = p["member_id"] if rng.random() < 0.6 else p["subscriber_id"]
        return mistype_id(base), None
    if cond == "other-payer":
        return other_payer_id(), rng.choice(OTHER_PAYERS)
    return None, None


PERTURBATIONS = ["nickname", "typo", "dob-off-by-one", "dob-day-month-swapped", "swapped-names", "middle-in-family",
                 "moved", "marriage", "diacritics"]
# Combinations provider systems produce together (drawn half the time a
# query gets two or three perturbations; otherwise a random compatible set).
COMBOS = [["nickname", "moved"], ["typo", "dob-day-month-swapped"], ["swapped-names", "moved"],
          ["marriage", "moved"], ["diacritics", "typo"], ["nickname", "dob-off-by-one"],
          ["marriage", "nickname"], ["swapped-names", "dob-day-month-swapped"], ["typo", "moved"],
          ["nickname", "moved", "dob-off-by-one"], ["marriage", "moved", "typo"],
          ["diacritics", "moved", "dob-day-month-swapped"], ["nickname", "typo", "moved"],
          ["middle-in-family", "moved"], ["marriage", "diacritics"]]
EXCLUSIVE = [{"dob-off-by-one", "dob-day-month-swapped"}, {"swapped-names", "middle-in-family"},
             {"marriage", "swapped-names"}, {"marriage", "middle-in-family"}]


def applicable(p, kind):
    given0 = p["given"][0].translate(ASCII)
    if kind == "nickname":
        return given0 in NICK
    if kind == "dob-day-month-swapped":
        _, m, d = p["birthDate"].split("-")
        return int(d) <= 12 and d != m
    if kind == "marriage":
        return p["rel"] in ("self", "spouse") and int(p["birthDate"][:4]) <= 2004
    if kind == "diacritics":
        names = [p["family"]] + p["given"][:1]
        return any(n != n.translate(ASCII) or n in ACCENT for n in names)
    return True


def compatible(kinds):
    s = set(kinds)
    return len(s) == len(kinds) and not any(len(s & e) > 1 for e in EXCLUSIVE)


def choose_perturbations(p):
    r = rng.random()
    n = 0 if r < 0.22 else 1 if r < 0.52 else 2 if r < 0.84 else 3
    if n == 0:
        return []
    for _ in range(30):
        if n >= 2 and rng.random() < 0.5:
            kinds = list(rng.choice([c for c in COMBOS if len(c) == n] or COMBOS))
        else:
            kinds = rng.sample(PERTURBATIONS, n)
        if compatible(kinds) and all(applicable(p, k) for k in kinds):
            return kinds
    return []


class Query:
    """A provider's view of one person, built from a person record."""

    def __init__(self, p):
        self.family = p["family"]
        self.given = list(p["given"])
        self.birth = p["birthDate"]
        self.gender = p["gender"]
        self.addr = p["addr"]
        self.phones = [x for x in (p.get("cell") or p.get("parent_phone"), p.get("home")) if x]
        self.email = p.get("email") or p.get("parent_email")
        self.old_family = None
        self.old_use = None
        self.suffix = p.get("suffix")
        self.card = None
        self.payor = "Fhirwall Example Health Plan"

    def perturb(self, kind, p):
        if kind == "nickname":
            self.given[0] = NICK.get(self.given[0].translate(ASCII), self.given[0])
        elif kind == "typo":
            if rng.random() < 0.5:
                self.family = typo(self.family)
            else:
                self.given[0] = typo(self.given[0])
        elif kind == "dob-off-by-one":
            self.birth = shift_day(self.birth, rng.choice([-1, 1]))
        elif kind == "dob-day-month-swapped":
            y, m, d = self.birth.split("-")
            self.birth = "%s-%s-%s" % (y, d, m)
        elif kind == "swapped-names":
            self.family, self.given = self.given[0], [self.family]
        elif kind == "middle-in-family":
            middle = self.given[1] if len(self.given) > 1 else (pick_f() if p["gender"] == "female" else pick_m())
            self.family = middle + " " + self.family
            self.given = self.given[:1]
        elif kind == "moved":
            self.addr = address()
            if rng.random() < 0.4:
                self.phones = [phone()]
            if self.email and rng.random() < 0.1:
                self.email = email(self.given[0], self.family)
        elif kind == "marriage":
            if p.get("maiden") and rng.random() < 0.6:
                # The payer has the married name and the maiden name; the
                # provider's record is from before the marriage.
                self.family = p["maiden"]
            elif rng.random() < 0.5:
                # Married (again) recently: the payer still has the old name.
                self.old_family, self.family = self.family, family_name()
                self.old_use = rng.choice(["old", "maiden"]) if rng.random() < 0.5 else None
            else:
                # The payer has the new name, the provider the old one.
                self.family = family_name()
        elif kind == "diacritics":
            def flip(n):
                if n != n.translate(ASCII):
                    return n.translate(ASCII)
                return ACCENT.get(n, n)
            self.family = " ".join(flip(w) for w in self.family.split(" "))
            self.given[0] = flip(self.given[0])

    def resource(self, qid):
        name = {"family": self.family, "given": self.given}
        if self.suffix and rng.random() < 0.5:
            name["suffix"] = [self.suffix]
        names = [name]
        if self.old_family and self.old_use:
            name["use"] = "official"
            names.append({"use": self.old_use, "family": self.old_family, "given": self.given[:1]})
        patient = {"resourceType": "Patient", "id": "1", "name": names}
        contact = []
        tel = []
        if self.phones and rng.random() < 0.7:
            tel.append({"system": "phone", "value": fmt_phone(rng.choice(self.phones), rng.randint(0, 4)),
                        "use": rng.choice(["home", "mobile"])})
            contact.append("phone")
        if self.email and rng.random() < 0.4:
            e = self.email if rng.random() < 0.8 else self.email.upper()
            tel.append({"system": "email", "value": e})
            contact.append("email")
        if tel:
            patient["telecom"] = tel
        if rng.random() < 0.95:
            patient["gender"] = self.gender
        patient["birthDate"] = self.birth
        if rng.random() < 0.85:
            patient["address"] = [fhir_address(self.addr, rng.randint(0, 2))]
            contact.append("address")
        cov = {"resourceType": "Coverage", "id": "card", "status": "active", "beneficiary": {"reference": "Patient/1"},
               "payor": [{"display": self.payor}]}
        if self.card is not None:
            cov["subscriberId"] = self.card
        params = {"resourceType": "Parameters", "id": qid, "parameter": [
            {"name": "MemberPatient", "resource": patient}, {"name": "CoverageToMatch", "resource": cov}]}
        return params, contact


def pick_weighted(table):
    return rng.choices([k for k, _ in table], [w for _, w in table])[0]


# Who the query is about: members (three ways of choosing them) and
# non-members whose right answer is no match.
KINDS = [("member", 64), ("twin", 4), ("jr-sr", 4), ("household-spouse", 5), ("household-child", 4),
         ("twin-nonmember", 4), ("jr-sr-nonmember", 4), ("doppelganger", 7), ("lookalike", 4)]


def make_queries(members, n):
    twins = [p for p in members if p.get("twin")]
    juniors = [p for p in members if p.get("junior") or p.get("senior")]
    households = {}
    for p in members:
        households.setdefault(p["household"], []).append(p)
    by_key = {}
    for p in members:
        by_key.setdefault((plain(p["family"]), p["birthDate"]), []).append(p)
    male_adults = [p for p in members if p["gender"] == "male" and p["rel"] in ("self", "spouse")]
    out = []
    for i in range(n):
        qid = "q%06d" % i
        kind = pick_weighted(KINDS)
        truth = None
        perturbations = []
        if kind in ("member", "twin", "jr-sr"):
            p = rng.choice(twins if kind == "twin" else juniors if kind == "jr-sr" else members)
            truth = p["id"]
            q = Query(p)
            perturbations = choose_perturbations(p)
            for k in perturbations:
                q.perturb(k, p)
            id_cond = pick_weighted(ID_CONDS)
            q.card, payor = card_for(p, id_cond)
            q.payor = payor or q.payor
        else:
            p = rng.choice(male_adults if kind == "jr-sr-nonmember" else members)
            home = households[p["household"]]
            names = [m["given"][0] for m in home]
            if kind == "household-spouse":
                g = "male" if p["gender"] == "female" else "female"
                other = person(g, p["family"] if rng.random() < 0.7 else family_name(), date(1935, 2002), avoid=names)
            elif kind == "household-child":
                dates = {m["birthDate"] for m in home}
                y0 = int(home[0]["birthDate"][:4])
                b = date(min(y0 + 18, 2023), min(y0 + 45, 2023))
                while b in dates:
                    b = shift_day(b, 3)
                other = person(rng.choice(["female", "male"]), home[0]["family"], b, avoid=names)
            elif kind == "twin-nonmember":
                other = person(rng.choice(["female", "male"]), p["family"], p["birthDate"], avoid=names)
            elif kind == "jr-sr-nonmember":
                years = rng.randint(20, 38) * (1 if rng.random() < 0.6 else -1)
                b = shift_day(p["birthDate"], int(years * 365.25) + rng.randint(-150, 150))
                other = {"gender": "male", "family": p["family"], "given": list(p["given"]), "birthDate": b,
                         "suffix": rng.choice(["Jr" if years > 0 else "Sr", None])}
            elif kind == "doppelganger":
                other = {"gender": p["gender"], "family": p["family"], "given": list(p["given"]),
                         "birthDate": p["birthDate"]}
            else:  # lookalike: same family name, another given name or birth date
                other = {"gender": p["gender"], "family": p["family"], "given": [first_name(p["gender"], [p["given"][0]])],
                         "birthDate": p["birthDate"]}
                if rng.random() < 0.5:
                    other["given"] = list(p["given"])
                    other["birthDate"] = shift_day(p["birthDate"], rng.choice([-1, 1]) * rng.randint(400, 9000))
            other["rel"] = "other"
            if kind in ("doppelganger",) or (kind == "jr-sr-nonmember" and rng.random() < 0.6):
                other["addr"] = address_elsewhere()
                other["home"] = None
            else:
                other["addr"] = p["addr"]
                other["home"] = p.get("home")
            other["cell"] = phone() if rng.random() < 0.8 else None
            if kind in ("household-child", "twin-nonmember") and rng.random() < 0.6:
                other["cell"] = next((m.get("cell") for m in home if m["rel"] == "self"), None)
            other["email"] = email(other["given"][0], other["family"]) if rng.random() < 0.6 else None
            taken = {m.get("email") for m in home} | {p.get("email")}
            while other["email"] in taken:
                other["email"] = email(other["given"][0], other["family"])
            q = Query(other)
            # Their card: another plan's, none, or (living with a member)
            # the household's subscriber id copied from a parent's card.
            if other["addr"] is p["addr"] and rng.random() < 0.4:
                id_cond, q.card = "household-subscriber-id", p["subscriber_id"]
            else:
                id_cond = rng.choice(["none", "other-payer"])
                q.card, payor = card_for(p, id_cond)
                q.payor = payor or q.payor
            # A "look-alike" that is in fact identical to a member is that member.
            if kind == "lookalike":
                for m in by_key.get((plain(other["family"]), other["birthDate"]), []):
                    if plain(m["given"][0]) == plain(other["given"][0]):
                        truth = m["id"]
        params, contact = q.resource(qid)
        out.append((params, {"id": qid, "member": truth and "Patient/" + truth, "kind": kind, "id_cond": id_cond,
                             "perturbations": perturbations, "contact": contact}))
    return out


def main():
    global rng, pick_f, pick_m, pick_common
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=100000)
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    pick_f, pick_m, pick_common = zipf(FEMALE, 0.6), zipf(MALE, 0.6), zipf(SURNAMES, 0.75)
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
    print("seed %d: %d members (%d twins, %d Jr/Sr), %d queries -> %s" % (
        args.seed, len(members), sum(1 for p in members if p.get("twin")),
        sum(1 for p in members if p.get("junior") or p.get("senior")), len(qs), args.out))


if __name__ == "__main__":
    main()
