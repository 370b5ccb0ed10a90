//! The audit records of a running export: one per batch (the patients it
//! searched, what the chain let out and withheld) and one at completion
//! naming the client and every patient whose data left.

use super::JobSpec;
use super::jobs::Job;
use super::runner::Progress;
use crate::audit::AuditRecord;
use crate::chain::disclosure::Disclosure;

fn job_record(job: &Job, spec: &JobSpec, interaction: &'static str) -> AuditRecord {
    let mut record = AuditRecord::new(
        crate::audit::Kind::Rest { interaction, operation: Some(spec.request.operation.code()) },
        crate::audit::event::new_event_id(),
    );
    record.who.client_id = Some(job.client_id.clone());
    record.who.organization = Some(job.organization.clone());
    record.who.npi = spec.delegation.npi.clone();
    record.who.authenticated = true;
    record.status = 200;
    record.resources.insert(format!("Group/{}", job.group_id));
    record.resource_types.extend(spec.request.types.iter().cloned());
    record.detail("export.job", job.id.clone());
    record
}

/// One batch's record: the patients it searched and what the chain let out
/// and withheld.
pub(super) fn batch_record(job: &Job, spec: &JobSpec, batch: usize, disclosure: &Disclosure) -> AuditRecord {
    let mut record = job_record(job, spec, "export-batch");
    record.detail("export.batch", (batch + 1).to_string());
    record.set_disclosure(disclosure);
    record
}

/// The completion record: which client exported which patients.
pub(super) fn completion_record(job: &Job, spec: &JobSpec, progress: &Progress) -> AuditRecord {
    let mut record = job_record(job, spec, "export-complete");
    let disclosure = Disclosure { patients: progress.patients.clone(), ..Disclosure::default() };
    record.set_disclosure(&disclosure);
    record.detail("export.left-out-patients", progress.left_out.to_string());
    record.detail("export.errors", progress.errors.len().to_string());
    record
}
