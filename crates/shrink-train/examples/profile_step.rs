//! Times the phases of one training step on a model (for finding where the time goes).
//! Usage: cargo run --release -p shrink-train --example profile_step -- MODEL SEQ_LEN

use std::time::Instant;

use candle_core::{Tensor, Var};
use shrink_train::grad::Grads;
use shrink_train::Trainable;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let ckpt = shrink_io::Checkpoint::open(&args[1])?;
    let t: usize = args[2].parse()?;
    let mut m = Trainable::load(&ckpt)?;
    let ids: Vec<u32> = (0..t as u32).map(|i| (i * 7919) % 40000).collect();
    let n = m.num_layers();
    for _ in 0..2 {
        let t0 = Instant::now();
        let mut x = m.embed(&ids)?.detach();
        let mut inputs = vec![];
        for i in 0..n {
            let y = m.layer(i, &x)?.detach();
            inputs.push(x);
            x = y;
        }
        let t_fwd = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let xv = Var::from_tensor(&x)?;
        let logits = m.head(xv.as_tensor())?;
        let t_head_fwd = t1.elapsed().as_secs_f64();
        let g = Tensor::ones_like(&logits)?;
        let t2 = Instant::now();
        let store = (&logits * &g)?.sum_all()?.backward()?;
        let t_head_bwd = t2.elapsed().as_secs_f64();
        let mut gx = store.get(xv.as_tensor()).unwrap().clone();
        drop(store);
        let t3 = Instant::now();
        let mut t_lfwd = 0.0;
        for i in (0..n).rev() {
            let xv = Var::from_tensor(&inputs[i])?;
            let tl = Instant::now();
            let y = m.layer(i, xv.as_tensor())?;
            t_lfwd += tl.elapsed().as_secs_f64();
            let store = (&y * &gx)?.sum_all()?.backward()?;
            gx = store.get(xv.as_tensor()).unwrap().clone();
        }
        let t_blocks = t3.elapsed().as_secs_f64();
        let t4 = Instant::now();
        let e = m.embed(&ids)?;
        let _store = (&e * &gx)?.sum_all()?.backward()?;
        let t_emb = t4.elapsed().as_secs_f64();
        println!(
            "fwd {t_fwd:.3}  head fwd {t_head_fwd:.3}  head bwd {t_head_bwd:.3}  blocks {t_blocks:.3} (of which recompute {t_lfwd:.3})  embed bwd {t_emb:.3}"
        );
    }
    let mut opt = shrink_train::optim::OptimState::new(&m.params);
    let vocab = m.vocab_size();
    for _ in 0..2 {
        let t0 = Instant::now();
        let mut grads = Grads::new(m.params.len());
        let labels: Vec<u32> = ids.iter().map(|&i| (i + 1) % 40000).collect();
        let l = shrink_train::loss::KdLoss {
            temperature: 2.0,
            alpha: 0.0,
            divergence: shrink_train::loss::Divergence::Forward,
        };
        let mut t_loss = 0.0;
        shrink_train::grad::backward(&m, &ids, &mut grads, |logits| {
            let tl = Instant::now();
            let z: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            let (p, g) = shrink_train::loss::kd_loss(
                &z,
                vocab,
                &labels,
                shrink_train::loss::Teacher::None,
                &l,
                t as f64,
            )?;
            let g = Tensor::from_vec(g, logits.shape(), logits.device())?;
            t_loss = tl.elapsed().as_secs_f64();
            Ok((p.total(&l), g))
        })?;
        let t_bwd = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        shrink_train::optim::clip(&mut grads, 1.0);
        let t_clip = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        shrink_train::optim::step(&mut m.params, &grads, &mut opt, &Default::default(), 1e-4)?;
        println!(
            "backward total {t_bwd:.3} (loss {t_loss:.3})  clip {t_clip:.3}  adamw {:.3}",
            t2.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
