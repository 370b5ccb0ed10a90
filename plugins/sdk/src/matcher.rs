//! The `matcher` world: bindings, the [`Matcher`] trait and [`export_matcher!`].

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "matcher",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__fhirwall_export_matcher_world",
        default_bindings_module: "fhirwall_plugin_sdk::matcher::bindings",
        additional_derives: [PartialEq],
    });
}

pub use bindings::fhirwall::plugin::matching::{
    Ambiguity, Candidate, CandidatePage, CandidateQuery, MatchRequest, MatchResult, Matched,
};

/// Where candidates come from: the host (inside fhirwall) or a test index.
pub trait Candidates {
    /// Members that satisfy every given field of `query`.
    fn candidates(&self, query: &CandidateQuery) -> Result<CandidatePage, String>;
}

/// The host's `candidates` import.
pub struct Host;

impl Candidates for Host {
    fn candidates(&self, query: &CandidateQuery) -> Result<CandidatePage, String> {
        bindings::candidates(query)
    }
}

/// A member matcher. `match_member` gets the request and a candidate source
/// (the host in fhirwall, [`crate::testing::MemberIndex`] in native tests).
pub trait Matcher {
    fn match_member(request: &MatchRequest, candidates: &dyn Candidates) -> MatchResult;
}

/// Export a [`Matcher`] implementation as the component's `matcher` world.
#[macro_export]
macro_rules! export_matcher {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __FhirwallMatcherExport;
        impl $crate::matcher::bindings::Guest for __FhirwallMatcherExport {
            fn match_member(request: $crate::matcher::MatchRequest) -> $crate::matcher::MatchResult {
                <$ty as $crate::matcher::Matcher>::match_member(&request, &$crate::matcher::Host)
            }
        }
        $crate::matcher::bindings::__fhirwall_export_matcher_world!(__FhirwallMatcherExport with_types_in $crate::matcher::bindings);
    };
}
