//! The AuditEvent builder (FHIR R4 AuditEvent in the style of IHE Basic Audit
//! Log Patterns). Callers fill an [`AuditRecord`] with plain facts — who,
//! what, outcome, what left, what was withheld — and [`AuditRecord::to_json`]
//! renders it. Nothing here reads a request or response body, so nothing
//! here can copy PHI into the log: the only identifiers written are client
//! ids, organization references, NPIs, resource ids, the peer address and
//! the request id. Search parameters (names, birth dates, …) never are.
//!
//! Shape:
//! - `type`/`subtype`: `rest` + the FHIR restful interaction (and fhirwall's
//!   operation code); DCM `110114` User Authentication / `110122` Login for
//!   token requests; `urn:fhirwall:audit-event-type#admin` + the admin action;
//!   DCM `110100` Application Activity / `110120` start, `110121` stop.
//! - `agent`: the requestor (DCM `110153` Source Role ID: client id or
//!   `admin`, peer IP), the provider organization (v3-RoleClass `PROV`:
//!   `Organization/…` + NPI), and fhirwall (DCM `110152` Destination Role ID).
//! - `entity`: the transaction (BALP `XrequestId`, with `detail` for the
//!   interaction, HTTP status, blame and the `suppressed.*`/`redacted.*`
//!   counts), one `Patient/{id}` per patient (description `disclosed`, or
//!   `requested` when the request named the patient but nothing of theirs
//!   left), resources addressed by id, and the resource types involved.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use serde::Serialize;

use crate::error::Blame;

/// `who.identifier.system` of a provider client id.
pub const CLIENT_ID_SYSTEM: &str = "urn:fhirwall:client-id";
/// `who.identifier.system` of the admin API's caller.
pub const ADMIN_SYSTEM: &str = "urn:fhirwall:admin";
const NPI_SYSTEM: &str = "http://hl7.org/fhir/sid/us-npi";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL: &str = "http://hl7.org/fhir/restful-interaction";
const FHIRWALL_INTERACTION: &str = "urn:fhirwall:interaction";
const FHIRWALL_OPERATION: &str = "urn:fhirwall:operation";
const FHIRWALL_EVENT_TYPE: &str = "urn:fhirwall:audit-event-type";
const FHIRWALL_ADMIN_ACTION: &str = "urn:fhirwall:admin-action";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const ROLE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleClass";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";

pub use crate::chain::disclosure::{Disclosure, Reason};

/// AuditEvent.action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
    Execute,
}

impl Action {
    fn code(self) -> &'static str {
        match self {
            Action::Create => "C",
            Action::Read => "R",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Execute => "E",
        }
    }
}

/// What kind of event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A request under the FHIR base. `interaction` is
    /// [`crate::fhir::Interaction::name`] or a pre-parse stage
    /// (`unrouted`, `unauthenticated`, `unparsed`, `smart-configuration`).
    Rest { interaction: &'static str, operation: Option<&'static str> },
    /// `POST /auth/token`.
    Token,
    /// A call on the admin listener; `action` names the route (`opt-out.put`, …).
    Admin { action: &'static str },
    /// The gateway started or stopped.
    Application { start: bool },
}

/// Who asked. For token requests that failed, `client_id` is the id the
/// request claimed and `authenticated` is false.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    pub client_id: Option<String>,
    /// `Organization/{id}`.
    pub organization: Option<String>,
    pub npi: Option<String>,
    pub authenticated: bool,
}

/// The facts of one audited event. Build with [`AuditRecord::new`], fill,
/// then render with [`AuditRecord::to_json`].
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// The `X-Request-Id` the response carries (the AuditEvent's `id` too).
    pub request_id: String,
    pub kind: Kind,
    pub action: Action,
    pub who: Who,
    pub peer: Option<IpAddr>,
    /// The HTTP status the client received (0 for application events).
    pub status: u16,
    pub blame: Option<Blame>,
    /// OperationOutcome issue code / OAuth error code of a refusal.
    pub issue: Option<&'static str>,
    /// Patients the request named (search parameters, compartment, a Patient
    /// read), bare ids.
    pub requested_patients: BTreeSet<String>,
    /// Resources addressed by id (`Observation/obs-1`).
    pub resources: BTreeSet<String>,
    /// Resource types the request was about.
    pub resource_types: BTreeSet<String>,
    /// The response filter's report; `None` when no filter ran (then a
    /// successful request counts as disclosing every patient it named).
    pub disclosure: Option<Disclosure>,
    /// Further facts (`scope`, `route`, …), never PHI.
    pub details: Vec<(&'static str, String)>,
    pub recorded: SystemTime,
}

impl AuditRecord {
    pub fn new(kind: Kind, request_id: impl Into<String>) -> AuditRecord {
        AuditRecord {
            request_id: request_id.into(),
            kind,
            action: Action::Execute,
            who: Who::default(),
            peer: None,
            status: 0,
            blame: None,
            issue: None,
            requested_patients: BTreeSet::new(),
            resources: BTreeSet::new(),
            resource_types: BTreeSet::new(),
            disclosure: None,
            details: Vec::new(),
            recorded: SystemTime::now(),
        }
    }

    /// A gateway start or stop record.
    pub fn application(start: bool) -> AuditRecord {
        let mut record = AuditRecord::new(Kind::Application { start }, new_event_id());
        record.who.authenticated = true;
        record
    }

    /// Add a fact (`name=value`); never pass PHI.
    pub fn detail(&mut self, name: &'static str, value: impl Into<String>) {
        self.details.push((name, value.into()));
    }

    /// Whether the client got a success (2xx/3xx) answer.
    pub fn succeeded(&self) -> bool {
        (100..400).contains(&self.status)
    }

    /// The patients whose data left: the filter's report, or, without one,
    /// every patient a successful request named.
    pub fn disclosed_patients(&self) -> BTreeSet<String> {
        if !self.succeeded() {
            return BTreeSet::new();
        }
        match &self.disclosure {
            Some(d) => d.patients.clone(),
            None => self.requested_patients.clone(),
        }
    }

    /// FHIR R4 AuditEvent.outcome: 0 success, 4 minor failure (refused), 8
    /// serious failure (upstream), 12 major failure (fhirwall failed).
    fn outcome(&self) -> &'static str {
        match self.status {
            0 | 100..=399 => "0",
            400..=499 => "4",
            _ if self.blame == Some(Blame::Upstream) => "8",
            _ => "12",
        }
    }

    /// The AuditEvent as compact JSON (one line, no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.render()).unwrap_or_else(|e| {
            // Serialising plain strings cannot fail; keep a well-formed record regardless.
            format!(
                r#"{{"resourceType":"AuditEvent","id":"{}","outcomeDesc":"render failed: {e}"}}"#,
                self.request_id
            )
        })
    }

    fn render(&self) -> Event<'_> {
        let (type_, subtype) = self.types();
        let recorded = super::time::format_micros(super::time::unix_micros(self.recorded));
        let outcome_desc = match (self.status, self.issue) {
            (0, _) => "ok".to_owned(),
            (status, Some(issue)) => format!("HTTP {status} ({issue})"),
            (status, None) => format!("HTTP {status}"),
        };
        Event {
            resource_type: "AuditEvent",
            id: &self.request_id,
            type_,
            subtype,
            action: self.action.code(),
            recorded,
            outcome: self.outcome(),
            outcome_desc,
            agent: self.agents(),
            source: Source {
                site: site(),
                observer: Reference { display: Some("fhirwall"), ..Reference::default() },
                type_: vec![coding(SOURCE_TYPE, "4", Some("Application Server"))],
            },
            entity: self.entities(),
        }
    }

    fn types(&self) -> (Coding<'_>, Vec<Coding<'_>>) {
        match &self.kind {
            Kind::Rest { interaction, operation } => {
                let standard = matches!(
                    *interaction,
                    "read"
                        | "vread"
                        | "update"
                        | "patch"
                        | "delete"
                        | "history-instance"
                        | "create"
                        | "search-type"
                        | "search-compartment"
                        | "capabilities"
                        | "batch"
                        | "operation"
                );
                let system = if standard { RESTFUL } else { FHIRWALL_INTERACTION };
                let mut subtype = vec![coding(system, interaction, None)];
                if let Some(op) = operation {
                    subtype.push(coding(FHIRWALL_OPERATION, op, None));
                }
                (coding(EVENT_TYPE, "rest", Some("Restful Operation")), subtype)
            }
            Kind::Token => (
                coding(DCM, "110114", Some("User Authentication")),
                vec![coding(DCM, "110122", Some("Login"))],
            ),
            Kind::Admin { action } => (
                coding(FHIRWALL_EVENT_TYPE, "admin", Some("Admin API call")),
                vec![coding(FHIRWALL_ADMIN_ACTION, action, None)],
            ),
            Kind::Application { start } => (
                coding(DCM, "110100", Some("Application Activity")),
                vec![if *start {
                    coding(DCM, "110120", Some("Application Start"))
                } else {
                    coding(DCM, "110121", Some("Application Stop"))
                }],
            ),
        }
    }

    fn agents(&self) -> Vec<Agent<'_>> {
        let network = self.peer.map(|ip| Network { address: ip.to_string(), type_: "2" });
        let requestor = match (&self.kind, &self.who.client_id) {
            (Kind::Application { .. }, _) => Agent {
                type_: concept(DCM, "110150", Some("Application")),
                who: Reference { display: Some("fhirwall"), ..Reference::default() },
                requestor: true,
                network: None,
            },
            (Kind::Admin { .. }, _) if self.who.authenticated => Agent {
                type_: concept(DCM, "110153", Some("Source Role ID")),
                who: Reference {
                    identifier: Some(Identifier { system: ADMIN_SYSTEM, value: "admin" }),
                    ..Reference::default()
                },
                requestor: true,
                network,
            },
            (_, Some(client_id)) => Agent {
                type_: concept(DCM, "110153", Some("Source Role ID")),
                who: Reference {
                    identifier: Some(Identifier { system: CLIENT_ID_SYSTEM, value: client_id }),
                    ..Reference::default()
                },
                requestor: true,
                network,
            },
            (_, None) => Agent {
                type_: concept(DCM, "110153", Some("Source Role ID")),
                who: Reference { display: Some("anonymous"), ..Reference::default() },
                requestor: true,
                network,
            },
        };
        let mut agents = vec![requestor];
        if self.who.organization.is_some() || self.who.npi.is_some() {
            agents.push(Agent {
                type_: concept(ROLE_CLASS, "PROV", Some("healthcare provider")),
                who: Reference {
                    reference: self.who.organization.as_deref().map(Cow::Borrowed),
                    identifier: self
                        .who
                        .npi
                        .as_deref()
                        .map(|npi| Identifier { system: NPI_SYSTEM, value: npi }),
                    ..Reference::default()
                },
                requestor: false,
                network: None,
            });
        }
        if !matches!(self.kind, Kind::Application { .. }) {
            agents.push(Agent {
                type_: concept(DCM, "110152", Some("Destination Role ID")),
                who: Reference { display: Some("fhirwall"), ..Reference::default() },
                requestor: false,
                network: None,
            });
        }
        agents
    }

    /// The request entity's details: what was asked, how it ended, and
    /// what the stages withheld or changed (counts per reason).
    fn request_details(&self) -> Vec<Detail> {
        let mut details = Vec::new();
        let mut add = |name: Cow<'static, str>, value: String| {
            details.push(Detail { type_: name, value_string: value })
        };
        match &self.kind {
            Kind::Rest { interaction, operation } => {
                add("interaction".into(), (*interaction).to_owned());
                if let Some(op) = operation {
                    add("operation".into(), (*op).to_owned());
                }
            }
            Kind::Admin { action } => add("action".into(), (*action).to_owned()),
            Kind::Token | Kind::Application { .. } => {}
        }
        if self.status != 0 {
            add("status".into(), self.status.to_string());
        }
        if let Some(blame) = self.blame {
            add("blame".into(), format!("{blame:?}").to_ascii_lowercase());
        }
        if !matches!(self.kind, Kind::Application { .. }) {
            add("authenticated".into(), self.who.authenticated.to_string());
        }
        if let Some(d) = &self.disclosure {
            for (reason, n) in &d.suppressed {
                add(format!("suppressed.{}", reason.as_str()).into(), n.to_string());
            }
            for (reason, n) in &d.redacted {
                add(format!("redacted.{}", reason.as_str()).into(), n.to_string());
            }
        }
        for (name, value) in &self.details {
            add(Cow::Borrowed(*name), value.clone());
        }
        details
    }

    fn entities(&self) -> Vec<Entity<'_>> {
        let details = self.request_details();
        let mut entities = vec![Entity {
            what: Reference {
                identifier: Some(Identifier { system: "urn:fhirwall:request-id", value: &self.request_id }),
                ..Reference::default()
            },
            type_: Some(coding(BALP_ENTITY_TYPE, "XrequestId", Some("X-Request-Id"))),
            role: None,
            description: None,
            detail: details,
        }];
        let disclosed = self.disclosed_patients();
        let requested = self.requested_patients.iter().filter(|p| !disclosed.contains(*p));
        let patients = disclosed.iter().map(|p| (p, "disclosed")).chain(requested.map(|p| (p, "requested")));
        for (id, description) in patients {
            entities.push(Entity {
                what: Reference {
                    reference: Some(Cow::Owned(format!("Patient/{id}"))),
                    ..Reference::default()
                },
                type_: Some(coding(ENTITY_TYPE, "1", Some("Person"))),
                role: Some(coding(OBJECT_ROLE, "1", Some("Patient"))),
                description: Some(description),
                detail: Vec::new(),
            });
        }
        for reference in &self.resources {
            entities.push(Entity {
                what: Reference { reference: Some(Cow::Borrowed(reference)), ..Reference::default() },
                type_: Some(coding(ENTITY_TYPE, "2", Some("System Object"))),
                role: Some(coding(OBJECT_ROLE, "4", Some("Domain Resource"))),
                description: None,
                detail: Vec::new(),
            });
        }
        let mut types: BTreeSet<&str> = self.resource_types.iter().map(String::as_str).collect();
        if self.succeeded()
            && let Some(d) = &self.disclosure
        {
            types.extend(d.resource_types.iter().map(String::as_str));
        }
        for resource_type in types {
            entities.push(Entity {
                what: Reference { type_: Some(resource_type), ..Reference::default() },
                type_: Some(coding(ENTITY_TYPE, "2", Some("System Object"))),
                role: Some(coding(OBJECT_ROLE, "4", Some("Domain Resource"))),
                description: None,
                detail: Vec::new(),
            });
        }
        entities
    }
}

/// A random id for events that are not requests (start/stop).
pub fn new_event_id() -> String {
    let bytes: [u8; 12] = rand::random();
    hex::encode(bytes)
}

/// `source.site`: the host name, so records from several nodes can be told apart.
fn site() -> Option<&'static str> {
    static SITE: OnceLock<Option<String>> = OnceLock::new();
    SITE.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty() && h.len() <= 255)
    })
    .as_deref()
}

fn coding<'a>(system: &'a str, code: &'a str, display: Option<&'a str>) -> Coding<'a> {
    Coding { system, code, display }
}

fn concept<'a>(system: &'a str, code: &'a str, display: Option<&'a str>) -> Concept<'a> {
    Concept { coding: vec![coding(system, code, display)] }
}

// --- the serialised shape (field order is the JSON order) -------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    resource_type: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    type_: Coding<'a>,
    subtype: Vec<Coding<'a>>,
    action: &'static str,
    recorded: String,
    outcome: &'static str,
    outcome_desc: String,
    agent: Vec<Agent<'a>>,
    source: Source<'a>,
    entity: Vec<Entity<'a>>,
}

#[derive(Serialize)]
struct Coding<'a> {
    system: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

#[derive(Serialize)]
struct Concept<'a> {
    coding: Vec<Coding<'a>>,
}

#[derive(Serialize)]
struct Agent<'a> {
    #[serde(rename = "type")]
    type_: Concept<'a>,
    who: Reference<'a>,
    requestor: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Network>,
}

#[derive(Serialize, Default)]
struct Reference<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<Cow<'a, str>>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    type_: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identifier: Option<Identifier<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

#[derive(Serialize)]
struct Identifier<'a> {
    system: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct Network {
    address: String,
    #[serde(rename = "type")]
    type_: &'static str,
}

#[derive(Serialize)]
struct Source<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<&'a str>,
    observer: Reference<'a>,
    #[serde(rename = "type")]
    type_: Vec<Coding<'a>>,
}

#[derive(Serialize)]
struct Entity<'a> {
    what: Reference<'a>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    type_: Option<Coding<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Coding<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    detail: Vec<Detail>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Detail {
    #[serde(rename = "type")]
    type_: Cow<'static, str>,
    value_string: String,
}
