//! Comparing the provider's person with a candidate, field by field, the
//! Fellegi–Sunter way: each field agrees at some level (exact, phonetic,
//! nickname, one typo, ..., different) and each level adds its evidence
//! weight (about log2 of how much more often the level occurs for the same
//! person than for two different people). The sum is the candidate's score.
//!
//! Fields that a household shares (subscriber id, address, phone, e-mail,
//! family name) corroborate an identity but never establish one: a
//! candidate is *eligible* (may be matched, or make a match ambiguous) only
//! when its person-level fields are compatible: birth date exact, day/month
//! swapped or one day off; given name exact, nickname, typo or the same
//! names in another order; gender and generational suffix (Jr/Sr) not in
//! conflict. Only the member's own id (never the subscriber id) relaxes
//! this, for an initial or a given name the provider has differently.

use fhirwall_plugin_sdk::fhir;

use crate::given_names;
use crate::nicknames;
use crate::phonetic::soundex;
use crate::record::{Cand, Date, Person, Probe};

/// Identifier agreement, worst to best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IdFit {
    /// The provider sent an id in this plan's format that is not this
    /// member's (nor one typo away): probably another member's.
    Conflict,
    /// No id, or one in another format (another payer's card).
    None,
    /// One character substituted or two transposed.
    Near,
    /// The subscriber id (or a member id built on it): the household.
    Subscriber,
    /// The member's own id.
    Member,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DobFit {
    Different,
    Missing,
    /// Same year; month and day differ by one digit or two adjacent digits
    /// transposed (`03-12` / `03-21`, `03-12` / `08-12`).
    Typo,
    OffByOne,
    Swapped,
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GivenFit {
    Different,
    Missing,
    /// An initial, or the provider's first name is the member's middle name.
    Weak,
    Typo,
    /// The same names in another order or written together.
    Partial,
    Nickname,
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FamilyFit {
    Different,
    Missing,
    Phonetic,
    Typo,
    /// A former (maiden, old) name on either side.
    Former,
    /// Shares a word (compound or hyphenated names, middle name in family).
    Partial,
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressFit {
    Different,
    Missing,
    City,
    Zip,
    Street,
    Full,
}

pub mod weight {
    pub const ID_MEMBER: f64 = 14.0;
    pub const ID_SUBSCRIBER: f64 = 11.0;
    pub const ID_NEAR: f64 = 9.0;
    pub const ID_CONFLICT: f64 = -5.0;

    pub const DOB_EXACT: f64 = 10.0;
    pub const DOB_NEAR: f64 = 6.0;
    pub const DOB_TYPO: f64 = 2.0;
    pub const DOB_DIFFERENT: f64 = -12.0;

    pub const GIVEN_EXACT: f64 = 5.0;
    pub const GIVEN_NICKNAME: f64 = 4.0;
    pub const GIVEN_PARTIAL: f64 = 3.5;
    pub const GIVEN_TYPO: f64 = 3.0;
    pub const GIVEN_WEAK: f64 = 0.5;
    pub const GIVEN_DIFFERENT: f64 = -8.0;

    pub const FAMILY_EXACT: f64 = 5.0;
    pub const FAMILY_PARTIAL: f64 = 4.0;
    pub const FAMILY_FORMER: f64 = 4.0;
    pub const FAMILY_TYPO: f64 = 3.0;
    pub const FAMILY_PHONETIC: f64 = 2.5;
    /// Mild: family names change (marriage).
    pub const FAMILY_DIFFERENT: f64 = -3.0;

    pub const GENDER_SAME: f64 = 0.5;
    pub const GENDER_DIFFERENT: f64 = -6.0;

    pub const ADDRESS_FULL: f64 = 8.0;
    pub const ADDRESS_STREET: f64 = 5.0;
    pub const ADDRESS_ZIP: f64 = 2.0;
    pub const ADDRESS_CITY: f64 = 0.5;
    /// Mild: people move.
    pub const ADDRESS_DIFFERENT: f64 = -0.5;
    pub const PHONE: f64 = 7.0;
    pub const EMAIL: f64 = 8.0;
}

/// How one candidate compares.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub score: f64,
    /// The part of the score from names, birth date and gender.
    pub identity: f64,
    /// Person-level fields compatible (see the module documentation).
    pub eligible: bool,
    /// Something beyond name and birth date agrees: an identifier (own,
    /// subscriber, or one typo away), the street address, a phone or an
    /// e-mail address.
    pub corroborated: bool,
    pub reasons: Vec<&'static str>,
    /// The levels, for `explain`.
    pub levels: Levels,
}

/// Read through `Debug` by `explain`.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Levels {
    pub id: IdFit,
    pub dob: DobFit,
    pub family: FamilyFit,
    pub given: GivenFit,
    pub address: AddressFit,
    pub gender_conflict: bool,
    pub generation_conflict: bool,
}

pub fn assess(probe: &Probe, cand: &Cand) -> Assessment {
    let p = &probe.person;
    let c = &cand.person;
    let mut s = 0.0;
    let mut reasons = Vec::new();

    let id = id_fit(probe, cand);
    s += match id {
        IdFit::Member => {
            reasons.push("member id");
            weight::ID_MEMBER
        }
        IdFit::Subscriber => {
            reasons.push("subscriber id");
            weight::ID_SUBSCRIBER
        }
        IdFit::Near => {
            reasons.push("id one typo away");
            weight::ID_NEAR
        }
        IdFit::Conflict => weight::ID_CONFLICT,
        IdFit::None => 0.0,
    };

    let dob = dob_fit(p.birth, c.birth);
    s += match dob {
        DobFit::Exact => {
            reasons.push("birth date");
            weight::DOB_EXACT
        }
        DobFit::Swapped | DobFit::OffByOne => {
            reasons.push("birth date near");
            weight::DOB_NEAR
        }
        DobFit::Typo => {
            reasons.push("birth date one digit off");
            weight::DOB_TYPO
        }
        DobFit::Missing => 0.0,
        DobFit::Different => weight::DOB_DIFFERENT,
    };

    let (family, given, swapped) = names_fit(p, c);
    if swapped {
        reasons.push("names swapped");
    }
    s += match family {
        FamilyFit::Exact => weight::FAMILY_EXACT,
        FamilyFit::Partial => weight::FAMILY_PARTIAL,
        FamilyFit::Former => {
            reasons.push("former family name");
            weight::FAMILY_FORMER
        }
        FamilyFit::Typo => weight::FAMILY_TYPO,
        FamilyFit::Phonetic => weight::FAMILY_PHONETIC,
        FamilyFit::Missing => 0.0,
        FamilyFit::Different => weight::FAMILY_DIFFERENT,
    };
    s += match given {
        GivenFit::Exact => weight::GIVEN_EXACT,
        GivenFit::Nickname => {
            reasons.push("nickname");
            weight::GIVEN_NICKNAME
        }
        GivenFit::Partial => weight::GIVEN_PARTIAL,
        GivenFit::Typo => weight::GIVEN_TYPO,
        GivenFit::Weak => weight::GIVEN_WEAK,
        GivenFit::Missing => 0.0,
        GivenFit::Different => weight::GIVEN_DIFFERENT,
    };
    if family == FamilyFit::Exact && given == GivenFit::Exact {
        reasons.push("name");
    }

    let gender_conflict = matches!((p.gender, c.gender), (Some(a), Some(b)) if a != b);
    match (p.gender, c.gender) {
        (Some(a), Some(b)) if a == b => s += weight::GENDER_SAME,
        (Some(_), Some(_)) => s += weight::GENDER_DIFFERENT,
        _ => {}
    }
    let generation_conflict = matches!((&p.generation, &c.generation), (Some(a), Some(b)) if a != b);

    let identity = s - id_w(id);
    let address = address_fit(p, c);
    s += match address {
        AddressFit::Full => {
            reasons.push("address");
            weight::ADDRESS_FULL
        }
        AddressFit::Street => {
            reasons.push("street address");
            weight::ADDRESS_STREET
        }
        AddressFit::Zip => {
            reasons.push("postal code");
            weight::ADDRESS_ZIP
        }
        AddressFit::City => weight::ADDRESS_CITY,
        AddressFit::Missing => 0.0,
        AddressFit::Different => weight::ADDRESS_DIFFERENT,
    };
    let phone = p.phones.iter().any(|x| c.phones.contains(x));
    if phone {
        reasons.push("phone");
        s += weight::PHONE;
    }
    let email = p.emails.iter().any(|x| c.emails.contains(x));
    if email {
        reasons.push("email");
        s += weight::EMAIL;
    }
    let corroborated = id >= IdFit::Near || address >= AddressFit::Street || phone || email;

    let own_id = id == IdFit::Member;
    // A birth date one digit off only with the full name agreeing.
    let strong_names = matches!(given, GivenFit::Exact | GivenFit::Nickname)
        && matches!(family, FamilyFit::Exact | FamilyFit::Partial | FamilyFit::Former);
    let dob_ok = matches!(dob, DobFit::Exact | DobFit::Swapped | DobFit::OffByOne)
        || (dob == DobFit::Typo && strong_names)
        || (dob == DobFit::Missing && own_id);
    let given_ok = matches!(given, GivenFit::Exact | GivenFit::Nickname | GivenFit::Partial | GivenFit::Typo)
        || (own_id && matches!(given, GivenFit::Weak | GivenFit::Missing))
        || (own_id && given == GivenFit::Different && dob == DobFit::Exact);
    let eligible = dob_ok && given_ok && (!gender_conflict || own_id) && !generation_conflict;
    let levels = Levels { id, dob, family, given, address, gender_conflict, generation_conflict };
    Assessment { score: s, identity, eligible, corroborated, reasons, levels }
}

/// The best agreement of any identifier the provider sent.
pub fn id_fit(probe: &Probe, cand: &Cand) -> IdFit {
    let mut best = IdFit::None;
    let mut conflict = false;
    for pid in &probe.ids {
        let p = pid.norm.as_str();
        let fit = if cand.member_ids.iter().any(|m| m == p) {
            IdFit::Member
        } else if cand.subscriber_ids.iter().any(|s| s.len() >= 6 && p.starts_with(s.as_str())) {
            IdFit::Subscriber
        } else if p.len() >= 6
            && cand.member_ids.iter().chain(&cand.subscriber_ids).any(|x| fhir::edit_distance(p, x, 1) <= 1)
        {
            IdFit::Near
        } else {
            conflict |= cand.member_ids.iter().chain(&cand.subscriber_ids).any(|x| same_format(p, x));
            IdFit::None
        };
        best = best.max(fit);
    }
    if best == IdFit::None && conflict { IdFit::Conflict } else { best }
}

/// Same letters before the digits, digits only after, same length: an id
/// this payer could have issued.
fn same_format(a: &str, b: &str) -> bool {
    fn split(s: &str) -> Option<(&str, &str)> {
        s.find(|c: char| c.is_ascii_digit()).map(|i| s.split_at(i))
    }
    match (split(a), split(b)) {
        (Some((pa, da)), Some((pb, db))) => {
            pa == pb
                && da.len() == db.len()
                && da.bytes().all(|c| c.is_ascii_digit())
                && db.bytes().all(|c| c.is_ascii_digit())
        }
        _ => false,
    }
}

pub fn dob_fit(p: Option<Date>, c: Option<Date>) -> DobFit {
    let (Some(p), Some(c)) = (p, c) else { return DobFit::Missing };
    if p == c {
        return DobFit::Exact;
    }
    if p.0 == c.0 && p.1 == c.2 && p.2 == c.1 {
        return DobFit::Swapped;
    }
    let days = fhir::days_from_civil(p.0, p.1, p.2) - fhir::days_from_civil(c.0, c.1, c.2);
    if days.abs() == 1 {
        return DobFit::OffByOne;
    }
    if p.0 == c.0 && one_digit_off(&format!("{:02}{:02}", p.1, p.2), &format!("{:02}{:02}", c.1, c.2)) {
        return DobFit::Typo;
    }
    DobFit::Different
}

/// Equal but for one digit, or two adjacent digits transposed.
fn one_digit_off(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let diff: Vec<usize> = (0..a.len().min(b.len())).filter(|&i| a[i] != b[i]).collect();
    match diff.as_slice() {
        [_] => true,
        [i, j] => *j == i + 1 && a[*i] == b[*j] && a[*j] == b[*i],
        _ => false,
    }
}

/// Could a candidate born on `c` be eligible for a probe born on `p` (with
/// a birth date one digit off counted or not)?
pub fn dob_compatible(p: Option<Date>, c: Option<Date>, typo: bool) -> bool {
    match dob_fit(p, c) {
        DobFit::Different => false,
        DobFit::Typo => typo,
        _ => true,
    }
}

/// Family and given name levels, trying the provider's names as sent and
/// swapped (family typed as given and given as family); the bool says the
/// swapped reading won.
fn names_fit(p: &Person, c: &Person) -> (FamilyFit, GivenFit, bool) {
    let family = family_fit_all(p, c);
    let given = given_fit(&p.given, &c.given);
    let straight = family_w(family) + given_w(given);
    if !p.given.is_empty() && !p.family.is_empty() && (family < FamilyFit::Typo || given < GivenFit::Typo) {
        let sf = family_fit(&p.given, &c.family);
        let sg = given_fit(&p.family, &c.given);
        if sf >= FamilyFit::Typo && sg >= GivenFit::Typo && family_w(sf) + given_w(sg) > straight {
            return (sf, sg, true);
        }
    }
    (family, given, false)
}

fn id_w(id: IdFit) -> f64 {
    match id {
        IdFit::Member => weight::ID_MEMBER,
        IdFit::Subscriber => weight::ID_SUBSCRIBER,
        IdFit::Near => weight::ID_NEAR,
        IdFit::Conflict => weight::ID_CONFLICT,
        IdFit::None => 0.0,
    }
}

fn family_w(f: FamilyFit) -> f64 {
    match f {
        FamilyFit::Exact => weight::FAMILY_EXACT,
        FamilyFit::Partial => weight::FAMILY_PARTIAL,
        FamilyFit::Former => weight::FAMILY_FORMER,
        FamilyFit::Typo => weight::FAMILY_TYPO,
        FamilyFit::Phonetic => weight::FAMILY_PHONETIC,
        FamilyFit::Missing => 0.0,
        FamilyFit::Different => weight::FAMILY_DIFFERENT,
    }
}

fn given_w(g: GivenFit) -> f64 {
    match g {
        GivenFit::Exact => weight::GIVEN_EXACT,
        GivenFit::Nickname => weight::GIVEN_NICKNAME,
        GivenFit::Partial => weight::GIVEN_PARTIAL,
        GivenFit::Typo => weight::GIVEN_TYPO,
        GivenFit::Weak => weight::GIVEN_WEAK,
        GivenFit::Missing => 0.0,
        GivenFit::Different => weight::GIVEN_DIFFERENT,
    }
}

/// The current family names, then former names on either side (a match
/// through a former name counts as `Former` at best).
fn family_fit_all(p: &Person, c: &Person) -> FamilyFit {
    let mut best = family_fit(&p.family, &c.family);
    if best >= FamilyFit::Former {
        return best;
    }
    let pairs = p
        .former_family
        .iter()
        .map(|pf| (pf, &c.family))
        .chain(c.former_family.iter().map(|cf| (&p.family, cf)))
        .chain(p.former_family.iter().flat_map(|pf| c.former_family.iter().map(move |cf| (pf, cf))));
    for (a, b) in pairs {
        if family_fit(a, b) >= FamilyFit::Partial {
            return FamilyFit::Former;
        }
        best = best.max(family_fit(a, b).min(FamilyFit::Typo));
    }
    best
}

/// Family names: equal words; a hyphenated or compound name sharing a word
/// (and a provider who put the middle name into family); one typo; the
/// same Soundex code.
pub fn family_fit(p: &[String], c: &[String]) -> FamilyFit {
    if p.is_empty() || c.is_empty() {
        return FamilyFit::Missing;
    }
    if p == c || p.concat() == c.concat() {
        return FamilyFit::Exact;
    }
    if p.iter().any(|w| w.len() >= 2 && c.contains(w)) {
        return FamilyFit::Partial;
    }
    let (pc, cc) = (p.concat(), c.concat());
    if (p.len() == 1 && c.len() == 1 && p[0].len() >= 4 && fhir::edit_distance(&p[0], &c[0], 1) <= 1)
        || (pc.len() >= 5 && fhir::edit_distance(&pc, &cc, 1) <= 1)
        || p.iter().any(|w| w.len() >= 5 && c.iter().any(|x| fhir::edit_distance(w, x, 1) <= 1))
    {
        return FamilyFit::Typo;
    }
    if p.iter().any(|w| w.len() >= 3 && c.iter().any(|x| x.len() >= 3 && soundex(w) == soundex(x))) {
        return FamilyFit::Phonetic;
    }
    FamilyFit::Different
}

/// Given names: the first given name against the candidate's first, with
/// nicknames, one typo, the same names in another order; an initial or the
/// candidate's middle name only weakly.
pub fn given_fit(p: &[String], c: &[String]) -> GivenFit {
    let (Some(first), Some(cfirst)) = (p.first(), c.first()) else { return GivenFit::Missing };
    if first == cfirst {
        return GivenFit::Exact;
    }
    if nicknames::same_person(first, cfirst) {
        return GivenFit::Nickname;
    }
    if p.concat() == c.concat() || (p.len() > 1 && c.len() > 1 && p.contains(cfirst) && c.contains(first)) {
        return GivenFit::Partial;
    }
    // Two real names a typo apart are two names (see `given_names`).
    let typo_possible = !(given_names::is_known(first) && given_names::is_known(cfirst));
    if typo_possible
        && ((first.len() >= 4 && cfirst.len() >= 4 && fhir::edit_distance(first, cfirst, 1) <= 1)
            || one_letter_more(first, cfirst)
            || one_letter_more(cfirst, first)
            || nicknames::typo_of_nickname(first, cfirst))
    {
        return GivenFit::Typo;
    }
    if (first.len() == 1 && cfirst.starts_with(first.as_str()))
        || (cfirst.len() == 1 && first.starts_with(cfirst.as_str()))
        || c[1..].contains(first)
    {
        return GivenFit::Weak;
    }
    GivenFit::Different
}

/// `long` is `short` (three letters or more) with one letter added after
/// the first (`amy` / `amye`, `ana` / `anna`, `rth` / `ruth`).
fn one_letter_more(short: &str, long: &str) -> bool {
    short.len() >= 3
        && long.len() == short.len() + 1
        && short.as_bytes()[0] == long.as_bytes()[0]
        && fhir::edit_distance(short, long, 1) <= 1
}

fn address_fit(p: &Person, c: &Person) -> AddressFit {
    let p_has = !p.streets.is_empty() || !p.zips.is_empty() || !p.cities.is_empty();
    let c_has = !c.streets.is_empty() || !c.zips.is_empty() || !c.cities.is_empty();
    if !p_has || !c_has {
        return AddressFit::Missing;
    }
    let street = p.streets.iter().any(|s| c.streets.contains(s));
    let zip = p.zips.iter().any(|z| c.zips.contains(z));
    let city = p.cities.iter().any(|x| c.cities.contains(x));
    match (street, zip || city, zip, city) {
        (true, true, _, _) => AddressFit::Full,
        (true, false, _, _) => AddressFit::Street,
        (false, _, true, _) => AddressFit::Zip,
        (false, _, false, true) => AddressFit::City,
        _ => AddressFit::Different,
    }
}

/// Can any candidate be corroborated (see [`Assessment::corroborated`])?
pub fn can_corroborate(probe: &Probe) -> bool {
    let p = &probe.person;
    !probe.ids.is_empty() || !p.streets.is_empty() || !p.phones.is_empty() || !p.emails.is_empty()
}

/// The most an unseen candidate could score, knowing what the queries
/// asked so far exclude: `dob_max` / `id_max` are the best birth-date and
/// identifier levels such a candidate can still have.
pub fn upper_bound(probe: &Probe, dob_max: DobFit, id_max: IdFit) -> f64 {
    let p = &probe.person;
    let mut s = 0.0;
    if !p.given.is_empty() {
        s += weight::GIVEN_EXACT;
    }
    if !p.family.is_empty() {
        s += weight::FAMILY_EXACT;
    }
    if p.gender.is_some() {
        s += weight::GENDER_SAME;
    }
    if p.birth.is_some() {
        s += match dob_max {
            DobFit::Exact => weight::DOB_EXACT,
            DobFit::Swapped | DobFit::OffByOne => weight::DOB_NEAR,
            _ => 0.0,
        };
    }
    if !probe.ids.is_empty() {
        s += match id_max {
            IdFit::Member => weight::ID_MEMBER,
            IdFit::Subscriber => weight::ID_SUBSCRIBER,
            IdFit::Near => weight::ID_NEAR,
            _ => 0.0,
        };
    }
    if !p.streets.is_empty() {
        s += weight::ADDRESS_FULL;
    } else if !p.zips.is_empty() {
        s += weight::ADDRESS_ZIP;
    } else if !p.cities.is_empty() {
        s += weight::ADDRESS_CITY;
    }
    if !p.phones.is_empty() {
        s += weight::PHONE;
    }
    if !p.emails.is_empty() {
        s += weight::EMAIL;
    }
    s
}
