//! The human-readable form of a plan (`tlsward plan --format text`). Never shows a key.

use std::fmt::Write;

use time::OffsetDateTime;

use super::{Action, Plan, relative, rfc3339};
use crate::dns::registry::Change;

fn action(a: &Action, now: OffsetDateTime) -> String {
    match a {
        Action::Keep { renew_at: Some(at) } => {
            match OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339) {
                Ok(t) => format!("keep (renew at {at}, {})", relative(t, now)),
                Err(_) => format!("keep (renew at {at})"),
            }
        }
        Action::Keep { renew_at: None } => "keep".into(),
        Action::Issue(r) => format!("ISSUE: {r}"),
    }
}

/// The plan as text, with times relative to `now` beside them.
pub fn to_text(plan: &Plan, now: OffsetDateTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Credentials:");
    for c in &plan.credentials {
        let hosts: Vec<String> = c.hosts.iter().map(|h| h.both_forms()).collect();
        if let Some(why) = &c.blocked {
            let _ = writeln!(
                out,
                "  {} [{}] issuer {}: BLOCKED: {why}",
                c.site,
                hosts.join(", "),
                c.issuer
            );
            continue;
        }
        let _ = writeln!(
            out,
            "  {} [{}] issuer {}: {}",
            c.site,
            hosts.join(", "),
            c.issuer,
            action(&c.server, now)
        );
        if let Some(ca) = &c.client_ca {
            let _ = writeln!(out, "    client CA: {}", action(ca, now));
        }
        for (name, a) in &c.clients {
            let _ = writeln!(out, "    client {name}: {}", action(a, now));
        }
        for d in &c.dropped {
            let _ = writeln!(out, "    drop {d}");
        }
    }
    for site in &plan.removed_credentials {
        let _ = writeln!(out, "  {site}: DELETE (site no longer configured)");
    }
    match &plan.istio_api {
        Some(api) => {
            let _ = writeln!(out, "Objects ({api}):");
        }
        None => {
            let _ = writeln!(out, "Objects:");
        }
    }
    for o in &plan.objects {
        let _ = writeln!(out, "  apply {o}");
    }
    for key in &plan.objects_to_delete {
        let _ = writeln!(out, "  DELETE {key}");
    }
    for z in &plan.zones {
        let _ = writeln!(
            out,
            "DNS {} (zone {}):",
            z.provider,
            if z.zone.is_empty() { "-" } else { &z.zone }
        );
        if let Some(why) = &z.unavailable {
            let _ = writeln!(out, "  unavailable: {why}");
        }
        if z.diff.changes.is_empty() && z.unavailable.is_none() {
            let _ = writeln!(out, "  no changes");
        }
        for ch in &z.diff.changes {
            let (op, r) = match ch {
                Change::Upsert(r) => ("upsert", r),
                Change::Delete(r) => ("delete", r),
            };
            let _ = writeln!(out, "  {op} {} {} {} {}", r.name, r.ttl, r.kind, r.values.join(" "));
        }
    }
    if let Some(mesh) = &plan.mesh {
        mesh_text(&mut out, mesh);
    }
    if !plan.conflicts.is_empty() {
        let _ = writeln!(out, "Conflicts (left untouched):");
        for c in &plan.conflicts {
            let _ = writeln!(out, "  {}: {}", c.subject, c.message);
        }
    }
    match plan.next_renewal {
        Some(t) => {
            let _ = writeln!(out, "Next renewal: {} ({})", rfc3339(t), relative(t, now));
        }
        None => {
            let _ = writeln!(out, "Next renewal: after this pass's issuances");
        }
    }
    out
}

/// The mesh step's part: objects, refusals, foreign effects, then the matrix.
fn mesh_text(out: &mut String, mesh: &crate::mesh::policy::MeshPlan) {
    let _ = writeln!(out, "Mesh policy:");
    for o in &mesh.objects {
        let what = if mesh.apply.contains(o) { "apply" } else { "keep" };
        let _ = writeln!(out, "  {what} {o}");
    }
    for o in &mesh.delete {
        let _ = writeln!(out, "  DELETE {o}");
    }
    for r in &mesh.refused {
        let _ = writeln!(out, "  REFUSED {r}");
    }
    for f in &mesh.foreign {
        let _ = writeln!(out, "  FOREIGN {f}");
    }
    for b in &mesh.breaks {
        let _ = writeln!(out, "  BREAKS {b}");
    }
    for c in &mesh.plaintext_callers {
        let _ = writeln!(
            out,
            "  PLAINTEXT {} <- {}: {} request(s) in the window would be refused once it is STRICT",
            c.service,
            c.caller,
            c.requests.round()
        );
    }
    for n in &mesh.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    if mesh.matrix.is_empty() {
        return;
    }
    let _ = writeln!(out, "Mesh matrix (server port: caller verdicts):");
    for row in &mesh.matrix {
        let mut parts = Vec::new();
        if !row.mtls.is_empty() {
            parts.push(format!("mtls [{}]", row.mtls.join(", ")));
        }
        if !row.plaintext.is_empty() {
            parts.push(format!("plaintext [{}]", row.plaintext.join(", ")));
        }
        for (by, callers) in &row.denied {
            parts.push(format!("DENIED by {by} [{}]", callers.join(", ")));
        }
        for (why, callers) in &row.broken {
            parts.push(format!("BROKEN ({why}) [{}]", callers.join(", ")));
        }
        let _ = writeln!(out, "  {} ({}): {}", row.server, row.mode, parts.join("; "));
    }
}
