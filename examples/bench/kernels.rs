//! tract's choice of matrix-product kernel against every other: the batch-1 tower is planned
//! once as tract picks and once with each f32 kernel of this CPU forced on every product, and
//! the plans are run in turns so that a noisy machine slows them alike.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use tract_linalg::isa::IsaSet;
use tract_linalg::mmm::{Query, Suitable};
use tract_linalg::mmm_tiers::MmmTier;
use tract_linalg::MmmDispatch;
use tract_onnx::prelude::*;

use crate::encoding::{percentile, plan, Timing};

/// The kernel every f32 product of the next plan built is given; `None`: tract's own choice.
static FORCED: Mutex<Option<&'static str>> = Mutex::new(None);

/// A tier above all of tract's own that answers with the forced kernel where it can run the
/// product; matrix-vector products (one column) keep tract's choice.
fn forced(
    _isa: &IsaSet,
    dt: DatumType,
    query: &Query,
    suitable: &[Suitable],
) -> Option<&'static str> {
    let name = (*FORCED.lock().ok()?)?;
    if dt != DatumType::F32 || query.n == Some(1) {
        return None;
    }
    suitable
        .iter()
        .any(|(k, _, _)| k.name() == name)
        .then_some(name)
}

inventory::submit! {
    MmmTier { arch: None, precedence: u8::MAX, name: "bench-forced", applies: |_| true, preferred: forced }
}

/// The f32 matrix-matrix kernels tract's own tiers pick on this CPU for some shape (so not the
/// ones its ladder passes over, such as AVX-without-FMA on an FMA machine).
fn candidates() -> Vec<&'static str> {
    let dispatch: &'static MmmDispatch = MmmDispatch::native();
    let mut names: Vec<&'static str> = Vec::new();
    for m in [8, 16, 24, 32, 40, 48, 50, 64, 96, 128, 768, 3072] {
        for n in 2..=64 {
            let Some(k) = dispatch.preferred_kernel(f32::datum_type(), Some(m), Some(512), Some(n))
            else {
                continue;
            };
            if let Some(r) = dispatch
                .runnable()
                .iter()
                .find(|r| r.name() == k.name() && r.nr() > 1)
            {
                names.push(r.name());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn planned(
    onnx: &Path,
    size: usize,
    kernel: Option<&'static str>,
) -> anyhow::Result<Arc<TypedRunnableModel>> {
    *FORCED.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = kernel;
    let built = plan(onnx, 1, size);
    *FORCED.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = None;
    built
}

/// The kernels tract picked for the plan's products, with how many products each.
fn picked(plan: &TypedRunnableModel) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for node in plan.model().nodes() {
        if let Some(mm) = node.op_as::<tract_onnx::tract_core::ops::matmul::optimized::OptMatMul>()
        {
            for k in &mm.mmm {
                *counts.entry(k.name().to_string()).or_default() += 1;
            }
        }
    }
    counts.into_iter().collect()
}

/// One model's tower with tract's choice and with each kernel forced, one thread, in turns
/// for about `seconds` in all.
pub fn kernel_choice(
    onnx: &Path,
    size: usize,
    seconds: f64,
    input: &Tensor,
) -> anyhow::Result<Value> {
    let mut plans: Vec<(Option<&'static str>, Arc<TypedRunnableModel>)> =
        vec![(None, planned(onnx, size, None)?)];
    for k in candidates() {
        plans.push((Some(k), planned(onnx, size, Some(k))?));
    }
    let run = |p: &Arc<TypedRunnableModel>| -> anyhow::Result<f64> {
        let started = Instant::now();
        p.run(tvec!(input.clone().into_tvalue()))?;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    // Warm every plan, then as many rounds as fit in the time, every plan once per round.
    let round_ms: f64 = plans
        .iter()
        .map(|(_, p)| run(p))
        .sum::<anyhow::Result<f64>>()?;
    let rounds = ((seconds * 1e3 / round_ms) as usize).clamp(8, 500);
    let mut ms = vec![Vec::with_capacity(rounds); plans.len()];
    for _ in 0..rounds {
        for (i, (_, p)) in plans.iter().enumerate() {
            ms[i].push(run(p)?);
        }
    }
    let timings: Vec<Timing> = ms.into_iter().map(|ms| Timing { ms }).collect();
    let default_ms = timings[0].median();
    let (best, best_ms) = plans[1..]
        .iter()
        .zip(&timings[1..])
        .map(|((k, _), t)| (k.unwrap_or_default(), t.median()))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(("", f64::NAN));
    Ok(json!({
        "rounds": rounds,
        "tract_choice": {"kernels": picked(&plans[0].1), "timing": timings[0].json()},
        "forced": plans[1..].iter().zip(&timings[1..]).map(|((k, _), t)| json!({
            "kernel": k, "timing": t.json(), "p25_ms": percentile(&t.ms, 25.0), "p75_ms": percentile(&t.ms, 75.0),
        })).collect::<Vec<_>>(),
        "best_forced": best,
        "best_forced_ms": best_ms,
        "tract_choice_vs_best_forced": best_ms / default_ms,
    }))
}
