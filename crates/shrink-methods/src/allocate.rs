//! One choice per tensor — a method, a bit width, a type — so that the whole model meets a
//! size budget with the least predicted loss, or a loss bound at the least size: a
//! multiple-choice knapsack, solved by Lagrangian relaxation (Everett 1963; as in rate–distortion
//! bit allocation, Shoham & Gersho 1988).
//!
//! For a multiplier λ ≥ 0 every tensor independently takes the option minimising
//! `loss + λ·bytes`; raising λ never makes a tensor larger, so a bisection on λ finds the
//! smallest mix that fits. What the bisection leaves of the budget is then spent greedily on the
//! upgrades that buy the most loss per byte. The relaxation also bounds how far from the optimum
//! the result can be: for every λ, `Σ min(loss + λ·bytes) − λ·B` is a lower bound on the least
//! loss any mix within `B` bytes reaches ([`Allocation::loss_bound`]), so each allocation states
//! its own gap.

use crate::error::{MethodError, Result};

/// One candidate for one tensor: what it would store and what it is predicted to cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Bytes the tensor takes with this option (everything it stores counted).
    pub bytes: u64,
    /// Predicted loss of this option (in any additive unit: KL, weighted squared error).
    pub loss: f64,
}

/// The choice made for every tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Per tensor, the index of the option taken.
    pub picks: Vec<usize>,
    /// Bytes of the whole mix.
    pub bytes: u64,
    /// Predicted loss of the whole mix.
    pub loss: f64,
    /// A lower bound, from the relaxation, on the least loss any mix of at most `bytes` reaches:
    /// the result is within `loss − loss_bound` of the optimum.
    pub loss_bound: f64,
}

/// The smallest and largest mixes the options allow: every tensor at its smallest option, and
/// every tensor at its largest.
pub fn reachable(options: &[Vec<Candidate>]) -> Result<(u64, u64)> {
    check(options)?;
    let min = options
        .iter()
        .map(|o| o.iter().map(|c| c.bytes).min().unwrap_or(0))
        .sum();
    let max = options
        .iter()
        .map(|o| o.iter().map(|c| c.bytes).max().unwrap_or(0))
        .sum();
    Ok((min, max))
}

fn check(options: &[Vec<Candidate>]) -> Result<()> {
    for (t, o) in options.iter().enumerate() {
        if o.is_empty() {
            return Err(MethodError::Options(format!("tensor {t} has no option")));
        }
        if let Some(c) = o.iter().find(|c| !c.loss.is_finite() || c.loss < 0.0) {
            return Err(MethodError::Options(format!(
                "tensor {t}: an option's predicted loss is {} (must be finite and ≥ 0)",
                c.loss
            )));
        }
    }
    Ok(())
}

/// Each tensor's option minimising `loss + λ·bytes` (ties to the smaller), and the sums.
fn at(options: &[Vec<Candidate>], lambda: f64) -> (Vec<usize>, u64, f64, f64) {
    let (mut picks, mut bytes, mut loss, mut lagrangian) = (Vec::new(), 0u64, 0f64, 0f64);
    for o in options {
        let mut best = 0;
        for (i, c) in o.iter().enumerate() {
            let (v, b) = (c.loss + lambda * c.bytes as f64, &o[best]);
            let vb = b.loss + lambda * b.bytes as f64;
            if v < vb || (v == vb && c.bytes < b.bytes) {
                best = i;
            }
        }
        let c = o[best];
        picks.push(best);
        bytes += c.bytes;
        loss += c.loss;
        lagrangian += c.loss + lambda * c.bytes as f64;
    }
    (picks, bytes, loss, lagrangian)
}

/// The least-loss mix of at most `budget` bytes; an error (saying what is reachable) when even
/// the smallest options exceed it.
pub fn within_bytes(options: &[Vec<Candidate>], budget: u64) -> Result<Allocation> {
    let (min, _) = reachable(options)?;
    if budget < min {
        return Err(MethodError::Options(format!(
            "no mix fits in {budget} bytes: the smallest options take {min}"
        )));
    }
    // λ = 0 takes every tensor's least-loss option; if that fits, it is optimal.
    let (picks, bytes, loss, _) = at(options, 0.0);
    if bytes <= budget {
        return Ok(Allocation {
            picks,
            bytes,
            loss,
            loss_bound: loss,
        });
    }
    // A λ at which every tensor takes its smallest option: above every loss-per-byte slope.
    let mut hi = 1.0;
    while at(options, hi).1 > budget {
        hi *= 2.0;
        if !hi.is_finite() {
            return Err(MethodError::Options(
                "the options' losses are too far apart to allocate".into(),
            ));
        }
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if at(options, mid).1 > budget {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (mut picks, mut bytes, mut loss, lagrangian) = at(options, hi);
    let bound = lagrangian - hi * budget as f64;
    // Spend what is left on the upgrades with the best loss saved per byte.
    loop {
        let mut best: Option<(usize, usize, f64)> = None;
        for (t, o) in options.iter().enumerate() {
            let cur = o[picks[t]];
            for (i, c) in o.iter().enumerate() {
                if c.loss >= cur.loss || bytes - cur.bytes + c.bytes > budget {
                    continue;
                }
                let extra = c.bytes.saturating_sub(cur.bytes).max(1) as f64;
                let rate = (cur.loss - c.loss) / extra;
                if best.is_none_or(|b| rate > b.2) {
                    best = Some((t, i, rate));
                }
            }
        }
        let Some((t, i, _)) = best else { break };
        let (cur, c) = (options[t][picks[t]], options[t][i]);
        bytes = bytes - cur.bytes + c.bytes;
        loss += c.loss - cur.loss;
        picks[t] = i;
    }
    Ok(Allocation {
        picks,
        bytes,
        loss,
        loss_bound: bound.min(loss),
    })
}

/// The smallest mix whose predicted loss is at most `max_loss`; an error (saying what is
/// reachable) when even the least-loss options exceed it.
pub fn within_loss(options: &[Vec<Candidate>], max_loss: f64) -> Result<Allocation> {
    check(options)?;
    let (picks, bytes, loss, _) = at(options, 0.0);
    if loss > max_loss {
        return Err(MethodError::Options(format!(
            "no mix has a predicted loss of at most {max_loss}: the least is {loss}"
        )));
    }
    // Bisect on the budget: the least-loss mix within it is found above; the smallest budget
    // whose mix meets the bound is the answer (a mix's loss falls as its budget grows).
    let (min, _) = reachable(options)?;
    let (mut lo, mut hi) = (min, bytes);
    let mut best = Allocation {
        picks,
        bytes,
        loss,
        loss_bound: loss,
    };
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let a = within_bytes(options, mid)?;
        if a.loss <= max_loss {
            hi = a.bytes.min(mid);
            best = a;
        } else {
            lo = mid + 1;
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(bytes: u64, loss: f64) -> Candidate {
        Candidate { bytes, loss }
    }

    /// The least loss within `budget` by trying every mix.
    fn brute(options: &[Vec<Candidate>], budget: u64) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut idx = vec![0usize; options.len()];
        loop {
            let bytes: u64 = idx.iter().zip(options).map(|(&i, o)| o[i].bytes).sum();
            let loss: f64 = idx.iter().zip(options).map(|(&i, o)| o[i].loss).sum();
            if bytes <= budget && best.is_none_or(|b| loss < b) {
                best = Some(loss);
            }
            let mut t = 0;
            loop {
                if t == idx.len() {
                    return best;
                }
                idx[t] += 1;
                if idx[t] < options[t].len() {
                    break;
                }
                idx[t] = 0;
                t += 1;
            }
        }
    }

    /// A deterministic pseudo-random source for the tests (xorshift).
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn meets_the_budget_within_its_stated_bound_of_the_optimum() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let n = 1 + (rng(&mut seed) % 5) as usize;
            let options: Vec<Vec<Candidate>> = (0..n)
                .map(|_| {
                    let k = 1 + (rng(&mut seed) % 4) as usize;
                    (0..k)
                        .map(|_| {
                            o(
                                1 + rng(&mut seed) % 100,
                                (rng(&mut seed) % 1000) as f64 / 7.0,
                            )
                        })
                        .collect()
                })
                .collect();
            let (min, max) = reachable(&options).unwrap();
            let budget = min + rng(&mut seed) % (max - min + 1);
            let a = within_bytes(&options, budget).unwrap();
            let opt = brute(&options, budget).unwrap();
            assert!(a.bytes <= budget);
            let sum: f64 = a.picks.iter().zip(&options).map(|(&i, o)| o[i].loss).sum();
            assert!((sum - a.loss).abs() < 1e-9);
            assert!(a.loss >= opt - 1e-9, "better than the optimum?");
            assert!(
                a.loss_bound <= opt + 1e-9,
                "bound {} above optimum {opt}",
                a.loss_bound
            );
        }
    }

    #[test]
    fn a_loss_bound_gives_a_mix_that_meets_it() {
        let options = vec![
            vec![o(10, 5.0), o(20, 2.0), o(40, 0.5)],
            vec![o(5, 9.0), o(10, 3.0), o(30, 0.1)],
        ];
        let a = within_loss(&options, 6.0).unwrap();
        assert!(a.loss <= 6.0);
        // The smallest such mix: 20 + 10 bytes (loss 5.0), not 10 + 30 (loss 5.1) or larger.
        assert_eq!(a.bytes, 30);
        assert!(within_loss(&options, 0.1).is_err());
    }

    #[test]
    fn impossible_targets_say_what_is_reachable() {
        let options = vec![vec![o(10, 1.0), o(20, 0.0)]];
        let e = within_bytes(&options, 9).unwrap_err().to_string();
        assert!(e.contains("smallest options take 10"), "{e}");
        assert!(within_bytes(&[vec![]], 10).is_err());
        assert!(within_bytes(&[vec![o(1, f64::NAN)]], 10).is_err());
    }
}
