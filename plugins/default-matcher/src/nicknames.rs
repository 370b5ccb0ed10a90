//! Common US English given-name equivalents (nickname <-> formal name).
//! Two names are the same person's when they share a group. Deliberately
//! small and conservative: a group never joins two formal names.

const GROUPS: &[&[&str]] = &[
    &["william", "bill", "billy", "will", "willy", "liam"],
    &["robert", "bob", "bobby", "rob", "robbie", "bert"],
    &["richard", "rick", "ricky", "dick", "rich", "richie"],
    &["james", "jim", "jimmy", "jamie"],
    &["john", "jack", "johnny", "jon"],
    &["joseph", "joe", "joey"],
    &["michael", "mike", "mikey", "mick"],
    &["thomas", "tom", "tommy"],
    &["charles", "charlie", "chuck", "chas"],
    &["christopher", "chris", "topher"],
    &["daniel", "dan", "danny"],
    &["matthew", "matt", "matty"],
    &["anthony", "tony"],
    &["andrew", "andy", "drew"],
    &["joshua", "josh"],
    &["david", "dave", "davey"],
    &["steven", "steve", "stevie", "stephen"],
    &["edward", "ed", "eddie", "ted", "teddy", "ned"],
    &["benjamin", "ben", "benny"],
    &["samuel", "sam", "sammy"],
    &["alexander", "alex", "xander", "sandy"],
    &["nicholas", "nick", "nicky"],
    &["jonathan", "jon", "jonny"],
    &["timothy", "tim", "timmy"],
    &["gregory", "greg"],
    &["patrick", "pat", "paddy"],
    &["peter", "pete"],
    &["raymond", "ray"],
    &["ronald", "ron", "ronnie"],
    &["donald", "don", "donnie"],
    &["kenneth", "ken", "kenny"],
    &["lawrence", "larry"],
    &["gerald", "jerry"],
    &["jeffrey", "jeff"],
    &["frederick", "fred", "freddie"],
    &["francis", "frank", "frankie"],
    &["henry", "hank", "harry"],
    &["walter", "walt"],
    &["eugene", "gene"],
    &["vincent", "vince", "vinny"],
    &["zachary", "zach", "zack"],
    &["nathaniel", "nate", "nathan"],
    &["elizabeth", "liz", "lizzie", "beth", "betty", "eliza", "betsy", "libby"],
    &["margaret", "maggie", "meg", "peggy", "marge", "margie"],
    &["katherine", "kate", "katie", "kathy", "kat", "kitty", "catherine", "kathryn", "cathy"],
    &["jennifer", "jen", "jenny"],
    &["jessica", "jess", "jessie"],
    &["patricia", "pat", "patty", "tricia", "trish"],
    &["barbara", "barb", "barbie"],
    &["susan", "sue", "suzy", "susie"],
    &["deborah", "deb", "debbie", "debra"],
    &["rebecca", "becky", "becca"],
    &["victoria", "vicky", "tori"],
    &["christina", "chris", "tina", "christine", "chrissy"],
    &["abigail", "abby"],
    &["samantha", "sam", "sammy"],
    &["alexandra", "alex", "alexa", "sandy"],
    &["jacqueline", "jackie"],
    &["kimberly", "kim"],
    &["pamela", "pam"],
    &["dorothy", "dot", "dottie"],
    &["judith", "judy"],
    &["theresa", "teresa", "terry", "tess"],
    &["cynthia", "cindy"],
    &["amanda", "mandy"],
    &["melissa", "missy", "mel"],
    &["stephanie", "steph"],
    &["nancy", "nan"],
    &["frances", "fran", "frannie"],
    &["josephine", "jo", "josie"],
    &["eleanor", "ellie", "nora", "ella"],
    &["caroline", "carol", "carrie"],
    &["mary", "molly", "polly", "mae", "mamie"],
    &["ann", "anne", "anna", "annie"],
    &["jose", "pepe"],
    &["francisco", "paco", "pancho"],
    &["guillermo", "memo"],
    &["alejandro", "alejo"],
    &["roberto", "beto"],
    &["eduardo", "lalo"],
    &["ignacio", "nacho"],
    &["dolores", "lola"],
    &["guadalupe", "lupe"],
    &["concepcion", "concha"],
    &["mercedes", "meche"],
];

/// Do `a` and `b` (normalised, lower-case) name the same person?
pub fn same_person(a: &str, b: &str) -> bool {
    GROUPS.iter().any(|g| g.contains(&a) && g.contains(&b))
}

/// Is `name` in any group?
pub fn is_listed(name: &str) -> bool {
    GROUPS.iter().any(|g| g.contains(&name))
}

/// Is `a` one typo away from a name of `b`'s group (`blil` for William's
/// `bill`, `bobe` for Robert's `bob`)? A typo is a substitution, drop or
/// transposition in a name of four letters or more (`jck` for
/// John's `jack`), or one letter added
/// at the end of a shorter one.
pub fn typo_of_nickname(a: &str, b: &str) -> bool {
    a.len() >= 3
        && GROUPS.iter().filter(|g| g.contains(&b)).any(|g| {
            g.iter().any(|n| {
                *n != b
                    && ((n.len() >= 4 && fhirwall_plugin_sdk::fhir::edit_distance(a, n, 1) <= 1)
                        || (n.len() == 3 && a.len() == 4 && a.starts_with(n)))
            })
        })
}
