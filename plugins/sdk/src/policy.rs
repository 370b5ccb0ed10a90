//! The `policy` world: bindings, the [`Policy`] trait and [`export_policy!`].

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__fhirwall_export_policy_world",
        default_bindings_module: "fhirwall_plugin_sdk::policy::bindings",
    });
}

pub use bindings::fhirwall::plugin::policy_types::{Decision, RequestContext, Verdict};

/// A policy plugin. It runs after fhirwall's built-in access and redaction
/// steps and can only take away: deny a request, drop a resource, or
/// replace it with a narrower version (same `resourceType` and `id`; the
/// replacement passes the built-in filters again).
pub trait Policy {
    /// Once per request, before the upstream is asked.
    fn on_request(ctx: &RequestContext) -> Decision;
    /// For every resource about to leave. `resource` is FHIR JSON.
    fn on_resource(ctx: &RequestContext, resource: &str) -> Verdict;
}

/// Export a [`Policy`] implementation as the component's `policy` world.
#[macro_export]
macro_rules! export_policy {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __FhirwallPolicyExport;
        impl $crate::policy::bindings::Guest for __FhirwallPolicyExport {
            fn on_request(ctx: $crate::policy::RequestContext) -> $crate::policy::Decision {
                <$ty as $crate::policy::Policy>::on_request(&ctx)
            }
            fn on_resource(ctx: $crate::policy::RequestContext, resource: String) -> $crate::policy::Verdict {
                <$ty as $crate::policy::Policy>::on_resource(&ctx, &resource)
            }
        }
        $crate::policy::bindings::__fhirwall_export_policy_world!(__FhirwallPolicyExport with_types_in $crate::policy::bindings);
    };
}

/// A request context for native tests.
pub fn test_context(client_id: &str, interaction: &str, resource_type: Option<&str>) -> RequestContext {
    RequestContext {
        request_id: "test".into(),
        client_id: client_id.into(),
        organization: "Organization/org-test".into(),
        npi: None,
        scopes: vec!["system/*.read".into()],
        interaction: interaction.into(),
        resource_type: resource_type.map(str::to_owned),
        patients: Vec::new(),
    }
}
