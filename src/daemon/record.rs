//! Record: after a pass, a plan over the world as it now is (the pass's own when it
//! changed nothing, else from a fresh observation) gives the metrics, the next renewal
//! and whether everything converged. Turning a plan and an
//! observation into metric values is `plan::report`'s pure function; this only hands
//! them over.

use time::OffsetDateTime;

use super::{PassReport, Runtime};
use crate::plan;

impl Runtime {
    /// Logs a pass's failures, each with its whole message (a site's own, `of_site`,
    /// were logged as `credential not renewed` when they happened), and counts them by
    /// stage.
    pub(super) fn finish(&self, report: PassReport) -> PassReport {
        for f in &report.failures {
            let stage = f.stage.as_str();
            if !f.is_site() {
                tracing::error!(subject = %f.subject, stage, error = %f.message, "pass step failed");
            }
            self.metrics.reconcile_error(stage);
        }
        report
    }

    /// Records the state after a pass: the plan over the world as it now is (the pass's
    /// own when it changed nothing, else a fresh observation's) gives the metrics, the
    /// next renewal, and whether everything converged.
    pub async fn record(&self, report: &mut PassReport) {
        let now = OffsetDateTime::now_utc();
        let mut ignored = Vec::new();
        // After a failed pass the zones are not read again: it would only repeat the
        // failure (a refused key, a dead server) without changing the outcome.
        let (observed, after) = match report.unchanged.take() {
            Some(unchanged) => unchanged,
            None => match self.observe(&mut ignored, report.failures.is_empty()).await {
                Ok((observed, _)) => {
                    let after = plan::plan(&self.config.file, &observed, now, self.seed);
                    (observed, after)
                }
                Err(_) => return,
            },
        };
        report.next_renewal = after.next_renewal;
        // Conflicts and zones that could not be planned leave something not as configured.
        report.converged = report.failures.is_empty()
            && after.is_noop()
            && after.conflicts.is_empty()
            && after.zones.iter().all(|z| z.unavailable.is_none());
        let states = plan::report::certificate_states(&self.config.file, &after, &observed, now, self.seed);
        let addresses: Vec<String> = observed
            .address
            .iter()
            .flat_map(|a| a.addresses().iter().map(|x| x.to_string()))
            .collect();
        self.metrics.record_state(&states, &addresses);
    }
}
