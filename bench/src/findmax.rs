//! Find-max: raise the open-loop rate step by step until the p99 latency
//! breaks the SLO, then narrow the edge by bisection. The highest passing
//! rate is the node's sustainable throughput; divided by the node's cores
//! it is the throughput per core, and it answers the capacity planner's
//! question: how many nodes for R requests/s at p99 ≤ L.
//!
//! A step passes when its corrected p99 is within the SLO, at most
//! `max_failure_ratio` of its requests failed or went unanswered, and the
//! answers kept up with the schedule (≥ 95% of the offered rate).

use serde::{Deserialize, Serialize};

use crate::BenchError;

/// How the search goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindMaxConfig {
    pub slo_p99_ms: f64,
    pub start_rate: f64,
    pub max_rate: f64,
    /// Each step offers this many times the previous rate (> 1).
    pub factor: f64,
    /// Bisection steps between the last pass and the first failure.
    pub refine: u32,
    pub max_failure_ratio: f64,
    /// Cores the node runs on (for the per-core figure).
    pub node_cores: u32,
    /// The planner's question: requests/s to serve at p99 ≤ the SLO.
    pub plan_rate: Option<f64>,
}

/// What one step measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub rate: f64,
    /// Answers per second.
    pub achieved_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub sent: u64,
    /// Transport errors, unanswered and 5xx.
    pub failures: u64,
}

/// One step and its verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    #[serde(flatten)]
    pub outcome: StepOutcome,
    pub pass: bool,
    pub reason: String,
}

/// The search's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindMaxResult {
    pub config: FindMaxConfig,
    pub steps: Vec<Step>,
    /// Highest offered rate that passed (requests/s per node).
    pub sustainable_rps: Option<f64>,
    pub per_core_rps: Option<f64>,
    /// Nodes needed for `plan_rate` at p99 ≤ the SLO.
    pub nodes_needed: Option<u64>,
    /// The search hit `max_rate` without failing.
    pub capped: bool,
}

impl FindMaxResult {
    /// One line for the terminal and the summary.
    pub fn headline(&self) -> String {
        let Some(rps) = self.sustainable_rps else {
            return format!(
                "no step met p99 <= {} ms (lowest rate tried {:.0} req/s)",
                self.config.slo_p99_ms, self.config.start_rate
            );
        };
        let mut line = format!(
            "sustainable {:.0} req/s per node at p99 <= {} ms ({:.0} req/s per core, {} node core{}){}",
            rps,
            self.config.slo_p99_ms,
            self.per_core_rps.unwrap_or(0.0),
            self.config.node_cores,
            if self.config.node_cores == 1 { "" } else { "s" },
            if self.capped { " — capped by --max-rate, the node may do more" } else { "" }
        );
        if let (Some(plan), Some(n)) = (self.config.plan_rate, self.nodes_needed) {
            line.push_str(&format!(
                "; nodes needed for {plan:.0} req/s at p99 <= {} ms: {n}",
                self.config.slo_p99_ms
            ));
        }
        line
    }
}

/// Judges one step.
pub fn judge(cfg: &FindMaxConfig, o: &StepOutcome) -> (bool, String) {
    let failure_ratio = o.failures as f64 / o.sent.max(1) as f64;
    if failure_ratio > cfg.max_failure_ratio {
        return (
            false,
            format!(
                "{} of {} requests failed ({:.2}% > {:.2}%)",
                o.failures,
                o.sent,
                failure_ratio * 100.0,
                cfg.max_failure_ratio * 100.0
            ),
        );
    }
    if o.p99_ms > cfg.slo_p99_ms {
        return (
            false,
            format!("p99 {:.3} ms > {} ms", o.p99_ms, cfg.slo_p99_ms),
        );
    }
    if o.achieved_rps < 0.95 * o.rate {
        return (
            false,
            format!(
                "answered {:.0}/s of {:.0}/s offered",
                o.achieved_rps, o.rate
            ),
        );
    }
    (
        true,
        format!("p99 {:.3} ms <= {} ms", o.p99_ms, cfg.slo_p99_ms),
    )
}

/// Runs the search; `run_step(rate, step_number)` runs one open-loop step.
pub fn find_max(
    cfg: &FindMaxConfig,
    mut run_step: impl FnMut(f64, usize) -> Result<StepOutcome, BenchError>,
    mut on_step: impl FnMut(&Step),
) -> Result<FindMaxResult, BenchError> {
    let valid = cfg.factor > 1.0 && cfg.start_rate > 0.0 && cfg.max_rate >= cfg.start_rate;
    if !valid {
        return Err(BenchError::Usage(
            "find-max needs factor > 1 and 0 < start rate <= max rate".into(),
        ));
    }
    let mut steps = Vec::new();
    let mut run = |rate: f64, steps: &mut Vec<Step>| -> Result<bool, BenchError> {
        let outcome = run_step(rate, steps.len())?;
        let (pass, reason) = judge(cfg, &outcome);
        let step = Step {
            outcome,
            pass,
            reason,
        };
        on_step(&step);
        steps.push(step);
        Ok(pass)
    };
    let mut best: Option<f64> = None;
    let mut worst_fail: Option<f64> = None;
    let mut rate = cfg.start_rate;
    loop {
        if run(rate, &mut steps)? {
            best = Some(rate);
            if rate >= cfg.max_rate {
                break;
            }
            rate = (rate * cfg.factor).min(cfg.max_rate);
        } else {
            worst_fail = Some(rate);
            break;
        }
    }
    if let (Some(mut lo), Some(mut hi)) = (best, worst_fail) {
        for _ in 0..cfg.refine {
            let mid = (lo + hi) / 2.0;
            if run(mid, &mut steps)? {
                lo = mid;
                best = Some(mid);
            } else {
                hi = mid;
            }
        }
    }
    let cores = f64::from(cfg.node_cores.max(1));
    Ok(FindMaxResult {
        config: cfg.clone(),
        capped: worst_fail.is_none(),
        per_core_rps: best.map(|b| b / cores),
        nodes_needed: match (best, cfg.plan_rate) {
            (Some(b), Some(plan)) => Some((plan / b).ceil().max(1.0) as u64),
            _ => None,
        },
        sustainable_rps: best,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FindMaxConfig {
        FindMaxConfig {
            slo_p99_ms: 5.0,
            start_rate: 1000.0,
            max_rate: 1e9,
            factor: 2.0,
            refine: 3,
            max_failure_ratio: 0.001,
            node_cores: 2,
            plan_rate: Some(500_000.0),
        }
    }

    /// A node that serves 10,000 req/s: p99 explodes past it.
    fn model(rate: f64) -> StepOutcome {
        let capacity = 10_000.0;
        StepOutcome {
            rate,
            achieved_rps: rate.min(capacity),
            p50_ms: 0.1,
            p99_ms: if rate <= capacity { 1.0 } else { 100.0 },
            p999_ms: 2.0,
            sent: rate as u64,
            failures: 0,
        }
    }

    #[test]
    fn finds_the_edge_and_plans_nodes() {
        let mut seen = 0;
        let r = find_max(&cfg(), |rate, _| Ok(model(rate)), |_| seen += 1).unwrap();
        // 1k, 2k, 4k, 8k pass; 16k fails; bisection: 12k fail, 10k pass, 11k fail.
        assert_eq!(r.sustainable_rps, Some(10_000.0));
        assert_eq!(r.per_core_rps, Some(5_000.0));
        assert_eq!(r.nodes_needed, Some(50));
        assert_eq!(seen, r.steps.len());
        assert_eq!(r.steps.len(), 8);
        assert!(!r.capped);
        assert!(
            r.headline().contains("nodes needed for 500000 req/s"),
            "{}",
            r.headline()
        );
    }

    #[test]
    fn failures_and_lag_fail_a_step() {
        let c = cfg();
        let mut o = model(1000.0);
        o.failures = 10;
        assert!(!judge(&c, &o).0);
        let mut o = model(1000.0);
        o.achieved_rps = 800.0;
        assert!(!judge(&c, &o).0);
        assert!(judge(&c, &model(1000.0)).0);
    }

    #[test]
    fn nothing_passes_or_everything_passes() {
        let r = find_max(&cfg(), |rate, _| Ok(model(rate * 100.0)), |_| {}).unwrap();
        assert_eq!(r.sustainable_rps, None);
        assert!(r.headline().starts_with("no step"));
        let mut c = cfg();
        c.max_rate = 5000.0;
        let r = find_max(&c, |rate, _| Ok(model(rate)), |_| {}).unwrap();
        assert_eq!(r.sustainable_rps, Some(5000.0));
        assert!(r.capped);
    }
}
