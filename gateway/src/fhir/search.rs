//! Typed FHIR search parameters. (Skeleton: being written; see issue #2.)

/// One `name[:modifier]=value[,value]` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParam {
    pub name: String,
    pub modifier: Option<String>,
    /// The comma-separated alternatives, decoded.
    pub values: Vec<String>,
}

/// All parameters of a request, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchParams {
    pub params: Vec<SearchParam>,
}

impl SearchParams {
    /// Re-encode as a query string (without `?`) to send upstream.
    pub fn to_query_string(&self) -> String {
        String::new()
    }
}
