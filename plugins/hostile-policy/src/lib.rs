//! A misbehaving `policy` plugin for fhirwall's sandbox tests (never deploy
//! it). What it does is chosen by the calling client's id prefix, so one
//! gateway can be attacked in many ways while other clients are served:
//!
//! | client id   | behaviour                                                    |
//! |-------------|--------------------------------------------------------------|
//! | `loop-*`    | spins forever in `on-resource` (epoch deadline)              |
//! | `work-*`    | computes for a fixed number of steps, then keeps (CPU-time deadline) |
//! | `oom-*`     | allocates until memory runs out (memory cap)                 |
//! | `recurse-*` | unbounded recursion (stack overflow trap)                    |
//! | `huge-*`    | replaces the resource with 64 MiB of text (output cap)       |
//! | `trap-*`    | panics (a trap)                                              |
//! | `fs-*`      | reads /etc/passwd and the working directory; denies with what it found |
//! | `env-*`     | reads the environment; denies with what it found             |
//! | `clock-*`   | reads the wall clock; denies when it looks real              |
//! | `state-*`   | keeps a counter in a static; denies when a previous request's value is visible |
//! | `deny-*`    | denies the request                                           |
//! | `drop-*`    | drops every resource                                         |
//! | `replace-*` | narrows every resource (removes `text` and `meta`)           |
//! | `grow-*`    | replaces resources with a different id (must count as drop)  |
//! | `garbage-*` | replaces resources with text that is not JSON                |
//! | other       | keeps everything                                             |

use std::sync::atomic::{AtomicU64, Ordering};

use fhirwall_plugin_sdk::policy::{Decision, Policy, RequestContext, Verdict};

pub struct Hostile;

static REQUESTS_SEEN: AtomicU64 = AtomicU64::new(0);

fn mode(ctx: &RequestContext) -> &str {
    ctx.client_id.split('-').next().unwrap_or("")
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, buf: &mut [u8; 256]) -> u64 {
    buf[(depth % 256) as usize] = depth as u8;
    let mut next = [0u8; 256];
    next.copy_from_slice(buf);
    recurse(depth + 1, &mut next) + u64::from(next[0])
}

impl Policy for Hostile {
    fn on_request(ctx: &RequestContext) -> Decision {
        match mode(ctx) {
            "deny" => Decision::Deny("denied by the test policy".into()),
            "fs" => {
                let passwd =
                    std::fs::read_to_string("/etc/passwd").map(|s| s.len()).map_err(|e| e.to_string());
                let cwd = std::fs::read_dir(".").map(|d| d.count()).map_err(|e| e.to_string());
                match (passwd, cwd) {
                    (Err(_), Err(_)) => Decision::Allow,
                    (p, c) => Decision::Deny(format!("filesystem visible: passwd {p:?}, cwd {c:?}")),
                }
            }
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                if vars.is_empty() {
                    Decision::Allow
                } else {
                    Decision::Deny(format!("environment visible: {vars:?}"))
                }
            }
            "clock" => {
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs());
                match now {
                    Ok(secs) if secs > 1_000_000_000 => Decision::Deny(format!("real clock visible: {secs}")),
                    _ => Decision::Allow,
                }
            }
            "state" => {
                let before = REQUESTS_SEEN.fetch_add(1, Ordering::SeqCst);
                if before == 0 {
                    Decision::Allow
                } else {
                    Decision::Deny(format!("state leaked: {before} earlier requests seen"))
                }
            }
            _ => Decision::Allow,
        }
    }

    fn on_resource(ctx: &RequestContext, resource: &str) -> Verdict {
        match mode(ctx) {
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "work" => {
                let mut x: u64 = 1;
                for _ in 0..20_000_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                std::hint::black_box(x);
                Verdict::Keep
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                let mut buf = [0u8; 256];
                let n = recurse(0, &mut buf);
                Verdict::Drop(format!("{n}"))
            }
            "huge" => Verdict::Replace("x".repeat(64 << 20)),
            "trap" => panic!("test policy trapped on purpose"),
            "drop" => Verdict::Drop("dropped by the test policy".into()),
            "replace" => {
                let Ok(mut v) = serde_json::from_str::<serde_json::Value>(resource) else {
                    return Verdict::Drop("unreadable".into());
                };
                if let Some(o) = v.as_object_mut() {
                    o.remove("text");
                    o.remove("meta");
                }
                Verdict::Replace(v.to_string())
            }
            "grow" => {
                let Ok(mut v) = serde_json::from_str::<serde_json::Value>(resource) else {
                    return Verdict::Drop("unreadable".into());
                };
                v["id"] = "someone-else".into();
                Verdict::Replace(v.to_string())
            }
            "garbage" => Verdict::Replace("{not json".into()),
            "state" => {
                REQUESTS_SEEN.fetch_add(1, Ordering::SeqCst);
                Verdict::Keep
            }
            _ => Verdict::Keep,
        }
    }
}

fhirwall_plugin_sdk::export_policy!(Hostile);
