//! Page assembly: a fhirwall page holds `_count` visible matches whatever
//! the upstream's pages held.
//!
//! The upstream is asked page after page; from each, the entries that
//! passed every stage are fed here in upstream order. The builder keeps
//! matches until it has `want` of them, and then looks for one more: only
//! when a further visible match exists does the page get a `next` link, and
//! that link resumes exactly there (the upstream page and how many of its
//! visible matches to skip). So the number of entries, the links and their
//! count depend on visible data only. `_include`/`_revinclude` results leave
//! only when linked to a match that leaves (an include a match references,
//! transitively through kept includes; a revinclude that references a match),
//! sorted by `Type/id`, so they do not depend on which hidden matches shared
//! an upstream page with the visible ones.
//!
//! The work per fhirwall page is bounded by [`MAX_UPSTREAM_PAGES`]: when
//! the bound is reached before the page is full, the page leaves with what
//! was found and a `next` link that continues after the last upstream page
//! read. This is the one place where hidden data can shape an answer (a
//! short page followed by more), and only after
//! `MAX_UPSTREAM_PAGES × upstream page size` withheld entries in a row.

use std::collections::{BTreeMap, HashSet};

use super::{Entry, EntryMode};

/// Upstream pages read at most for one fhirwall page.
pub const MAX_UPSTREAM_PAGES: usize = 50;

/// Where a page starts: an upstream page (its path below the upstream base)
/// and how many of its visible matches were already sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub path: String,
    pub skip: usize,
}

/// What to do after feeding one upstream page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read this upstream page next.
    Fetch(Cursor),
    /// The page is complete.
    Done,
}

/// An assembled page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub matches: Vec<Entry>,
    pub includes: Vec<Entry>,
    /// Where the next fhirwall page starts; `None` on the last page.
    pub next: Option<Cursor>,
    /// The upstream ran out within this page (nothing was left unread), so
    /// a count of the matches is a count of every visible match from here.
    pub complete: bool,
}

#[derive(Debug)]
pub struct PageBuilder {
    want: usize,
    matches: Vec<Entry>,
    seen: HashSet<String>,
    /// Include candidates by key (first copy wins).
    includes: BTreeMap<String, Entry>,
    next: Option<Cursor>,
    upstream_pages: usize,
    done: bool,
    complete: bool,
}

impl PageBuilder {
    /// A page of `want` matches (at least one).
    pub fn new(want: usize) -> PageBuilder {
        PageBuilder {
            want: want.max(1),
            matches: Vec::new(),
            seen: HashSet::new(),
            includes: BTreeMap::new(),
            next: None,
            upstream_pages: 0,
            done: false,
            complete: false,
        }
    }

    /// Feed the surviving entries of the upstream page at `at` (in upstream
    /// order) and the upstream's own next link (below its base).
    pub fn feed(&mut self, at: &Cursor, entries: Vec<Entry>, upstream_next: Option<String>) -> Step {
        debug_assert!(!self.done, "feed after Done");
        self.upstream_pages += 1;
        let mut ordinal = 0;
        for entry in entries {
            match entry.mode {
                EntryMode::Include => {
                    self.includes.entry(entry.key.clone()).or_insert(entry);
                }
                EntryMode::Match => {
                    let position = ordinal;
                    ordinal += 1;
                    if position < at.skip || self.next.is_some() {
                        continue;
                    }
                    if self.matches.len() == self.want {
                        self.next = Some(Cursor { path: at.path.clone(), skip: position });
                        continue;
                    }
                    // A resource the upstream lists twice (its data moved
                    // between two page reads) leaves once.
                    if self.seen.insert(entry.key.clone()) {
                        self.matches.push(entry);
                    }
                }
            }
        }
        if self.next.is_some() {
            self.done = true;
            return Step::Done;
        }
        match upstream_next {
            None => {
                self.done = true;
                self.complete = true;
                Step::Done
            }
            Some(path) if self.upstream_pages >= MAX_UPSTREAM_PAGES => {
                self.next = Some(Cursor { path, skip: 0 });
                self.done = true;
                Step::Done
            }
            Some(path) => Step::Fetch(Cursor { path, skip: 0 }),
        }
    }

    /// The page, with `references` giving the `Type/id`s a resource names.
    pub fn finish(self, references: &dyn Fn(&Entry) -> Vec<String>) -> Page {
        let match_keys: HashSet<&str> = self.matches.iter().map(|e| e.key.as_str()).collect();
        // Forward links from what leaves, to a fixed point (`:iterate`).
        let mut wanted: HashSet<String> = self.matches.iter().flat_map(references).collect();
        let mut kept: HashSet<String> = HashSet::new();
        loop {
            let before = kept.len();
            for (key, entry) in &self.includes {
                if match_keys.contains(key.as_str()) || kept.contains(key) {
                    continue;
                }
                if wanted.contains(key) {
                    kept.insert(key.clone());
                    wanted.extend(references(entry));
                }
            }
            if kept.len() == before {
                break;
            }
        }
        // Reverse links: a revinclude that names a match that leaves.
        for (key, entry) in &self.includes {
            if !match_keys.contains(key.as_str())
                && !kept.contains(key)
                && references(entry).iter().any(|r| match_keys.contains(r.as_str()))
            {
                kept.insert(key.clone());
            }
        }
        let includes = self.includes.into_iter().filter(|(k, _)| kept.contains(k)).map(|(_, e)| e).collect();
        Page { matches: self.matches, includes, next: self.next, complete: self.complete }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(key: &str) -> Entry {
        Entry { key: key.into(), mode: EntryMode::Match, resource: String::new(), version: None }
    }
    fn inc(key: &str, refs: &str) -> Entry {
        Entry { key: key.into(), mode: EntryMode::Include, resource: refs.into(), version: None }
    }
    fn at(path: &str, skip: usize) -> Cursor {
        Cursor { path: path.into(), skip }
    }
    fn refs(e: &Entry) -> Vec<String> {
        e.resource.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }

    #[test]
    fn fills_from_further_pages_and_links_next_only_to_a_visible_match() {
        let mut b = PageBuilder::new(2);
        assert_eq!(b.feed(&at("p1", 0), vec![m("O/1")], Some("p2".into())), Step::Fetch(at("p2", 0)));
        assert_eq!(b.feed(&at("p2", 0), vec![], Some("p3".into())), Step::Fetch(at("p3", 0)));
        assert_eq!(b.feed(&at("p3", 0), vec![m("O/2"), m("O/3")], Some("p4".into())), Step::Done);
        let page = b.finish(&refs);
        assert_eq!(page.matches.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["O/1", "O/2"]);
        assert_eq!(page.next, Some(at("p3", 1)));
        assert!(!page.complete);
    }

    #[test]
    fn a_full_page_with_nothing_visible_after_it_has_no_next() {
        let mut b = PageBuilder::new(1);
        assert_eq!(b.feed(&at("p1", 0), vec![m("O/1")], Some("p2".into())), Step::Fetch(at("p2", 0)));
        // The upstream's next page holds only withheld entries.
        assert_eq!(b.feed(&at("p2", 0), vec![], None), Step::Done);
        let page = b.finish(&refs);
        assert_eq!(page.matches.len(), 1);
        assert_eq!(page.next, None);
        assert!(page.complete);
    }

    #[test]
    fn resuming_skips_the_matches_already_sent() {
        let mut b = PageBuilder::new(1);
        assert_eq!(b.feed(&at("p3", 1), vec![m("O/2"), m("O/3"), m("O/4")], None), Step::Done);
        let page = b.finish(&refs);
        assert_eq!(page.matches[0].key, "O/3");
        assert_eq!(page.next, Some(at("p3", 2)));
    }

    #[test]
    fn the_bound_ends_a_page_with_a_link_after_the_last_read() {
        let mut b = PageBuilder::new(1);
        let mut step = Step::Fetch(at("p0", 0));
        for n in 0..MAX_UPSTREAM_PAGES {
            let Step::Fetch(cursor) = step else { panic!("stopped early at {n}") };
            step = b.feed(&cursor, vec![], Some(format!("p{}", n + 1)));
        }
        assert_eq!(step, Step::Done);
        let page = b.finish(&refs);
        assert!(page.matches.is_empty());
        assert_eq!(page.next, Some(at(&format!("p{MAX_UPSTREAM_PAGES}"), 0)));
    }

    #[test]
    fn includes_leave_only_when_linked_to_a_match_that_leaves() {
        let mut b = PageBuilder::new(1);
        let mut first = m("E/1");
        first.resource = "Practitioner/a".into();
        let mut deferred = m("E/2");
        deferred.resource = "Practitioner/b".into();
        let entries = vec![
            first,
            deferred,
            inc("Practitioner/b", ""),
            inc("Practitioner/a", "Organization/o"),
            inc("Organization/o", ""),
            inc("Provenance/p1", "E/1,Practitioner/b"),
            inc("Provenance/p2", "E/2"),
            inc("Organization/z", ""),
        ];
        assert_eq!(b.feed(&at("p1", 0), entries, None), Step::Done);
        let page = b.finish(&refs);
        let keys: Vec<&str> = page.includes.iter().map(|e| e.key.as_str()).collect();
        // Sorted by key; Practitioner/b is named only by the deferred match
        // and by a revinclude, which does not pull further includes in.
        assert_eq!(keys, ["Organization/o", "Practitioner/a", "Provenance/p1"]);
        assert_eq!(page.next, Some(at("p1", 1)));
    }

    #[test]
    fn a_match_listed_twice_leaves_once() {
        let mut b = PageBuilder::new(3);
        b.feed(&at("p1", 0), vec![m("O/1")], Some("p2".into()));
        b.feed(&at("p2", 0), vec![m("O/1"), m("O/2")], None);
        let page = b.finish(&refs);
        assert_eq!(page.matches.len(), 2);
    }
}
