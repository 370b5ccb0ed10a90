//! The finished export: its files (runs of segments of one type, cut at
//! `export.file_max_bytes`), the Bulk Data manifest that lists them, and the
//! OperationOutcome lines of the `error` file.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One stored segment: whole NDJSON lines of one type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub key: String,
    pub count: u64,
    pub bytes: u64,
}

/// One downloadable file: segments served back to back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub segments: Vec<String>,
    pub count: u64,
}

/// What a finished job stores: the manifest as sent, and what each of its
/// URLs (`{base}/_export/{job}/files/{n}`) serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub manifest: Value,
    pub files: Vec<FileEntry>,
}

/// What the manifest says besides the files.
pub struct Context<'a> {
    pub job_id: &'a str,
    pub transaction_time: &'a str,
    /// The kick-off request URL.
    pub request: &'a str,
    pub public_base: &'a str,
    pub file_max_bytes: u64,
    /// The exported types, in the order of the output.
    pub types: &'a [String],
}

/// The download URL of file `n` of a job.
pub fn file_url(public_base: &str, job_id: &str, n: usize) -> String {
    format!("{public_base}/_export/{job_id}/files/{n}")
}

/// Group the segments into files (per type, in `types` order, cut once a
/// file reaches `file_max_bytes`) and write the manifest.
pub fn build(ctx: &Context<'_>, segments: &[Segment], errors: Option<Segment>) -> Stored {
    let mut files: Vec<FileEntry> = Vec::new();
    for resource_type in ctx.types {
        let mut current: Option<(FileEntry, u64)> = None;
        for segment in segments.iter().filter(|s| &s.resource_type == resource_type) {
            if let Some((_, bytes)) = &current
                && *bytes >= ctx.file_max_bytes
            {
                files.push(current.take().expect("checked").0);
            }
            let (file, bytes) = current.get_or_insert_with(|| {
                (FileEntry { resource_type: resource_type.clone(), segments: Vec::new(), count: 0 }, 0)
            });
            file.segments.push(segment.key.clone());
            file.count += segment.count;
            *bytes += segment.bytes;
        }
        files.extend(current.map(|(file, _)| file));
    }
    let output: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(n, f)| json!({"type": f.resource_type, "url": file_url(ctx.public_base, ctx.job_id, n), "count": f.count}))
        .collect();
    let mut error = Vec::new();
    if let Some(segment) = errors {
        let n = files.len();
        error.push(json!({"type": "OperationOutcome", "url": file_url(ctx.public_base, ctx.job_id, n), "count": segment.count}));
        files.push(FileEntry {
            resource_type: segment.resource_type,
            segments: vec![segment.key],
            count: segment.count,
        });
    }
    let manifest = json!({
        "transactionTime": ctx.transaction_time,
        "request": ctx.request,
        "requiresAccessToken": true,
        "output": output,
        "error": error,
    });
    Stored { manifest, files }
}

/// One OperationOutcome per line: what was skipped under lenient handling
/// (severity `warning`: the export is whole without it), then what failed
/// (severity `error`: data may be missing).
pub fn outcome_lines(skipped: &[String], failed: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    let problems = skipped.iter().map(|p| ("warning", p)).chain(failed.iter().map(|p| ("error", p)));
    for (severity, problem) in problems {
        let outcome = json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": "processing", "diagnostics": problem}],
        });
        out.extend(outcome.to_string().bytes());
        out.push(b'\n');
    }
    out
}

/// `Type/id` of one NDJSON line.
pub fn key_of_line(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "resourceType")]
        resource_type: String,
        id: String,
    }
    let head: Head = serde_json::from_slice(line).ok()?;
    Some(format!("{}/{}", head.resource_type, head.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(t: &str, key: &str, count: u64, bytes: u64) -> Segment {
        Segment { resource_type: t.into(), key: key.into(), count, bytes }
    }

    #[test]
    fn files_group_segments_per_type_and_cut_at_the_size() {
        let types = vec!["Patient".to_string(), "Observation".to_string()];
        let ctx = Context {
            job_id: "j1",
            transaction_time: "2026-12-05T10:00:00Z",
            request: "http://gw/fhir/Group/g/$export",
            public_base: "http://gw/fhir",
            file_max_bytes: 100,
            types: &types,
        };
        let segments = vec![
            seg("Observation", "j1/o0", 3, 60),
            seg("Patient", "j1/p0", 2, 10),
            seg("Observation", "j1/o1", 3, 60),
            seg("Observation", "j1/o2", 1, 10),
            seg("Patient", "j1/p1", 1, 10),
        ];
        let stored = build(&ctx, &segments, Some(seg("OperationOutcome", "j1/err", 1, 50)));
        let shape: Vec<(&str, Vec<&str>, u64)> = stored
            .files
            .iter()
            .map(|f| (f.resource_type.as_str(), f.segments.iter().map(String::as_str).collect(), f.count))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("Patient", vec!["j1/p0", "j1/p1"], 3),
                ("Observation", vec!["j1/o0", "j1/o1"], 6),
                ("Observation", vec!["j1/o2"], 1),
                ("OperationOutcome", vec!["j1/err"], 1),
            ]
        );
        let m = &stored.manifest;
        assert_eq!(m["requiresAccessToken"], true);
        assert_eq!(m["output"].as_array().unwrap().len(), 3);
        assert_eq!(m["output"][1]["url"], "http://gw/fhir/_export/j1/files/1");
        assert_eq!(m["error"][0]["url"], "http://gw/fhir/_export/j1/files/3");
        assert_eq!(m["transactionTime"], "2026-12-05T10:00:00Z");
    }

    #[test]
    fn outcome_lines_are_one_outcome_each() {
        let text = String::from_utf8(outcome_lines(&["a".into()], &["b \"q\"".into()])).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["issue"][0]["severity"], "warning");
        assert_eq!(lines[1]["issue"][0]["severity"], "error");
        assert_eq!(lines[1]["issue"][0]["diagnostics"], "b \"q\"");
        assert_eq!(
            key_of_line(br#"{"resourceType":"Patient","id":"p1","x":1}"#).as_deref(),
            Some("Patient/p1")
        );
    }
}
