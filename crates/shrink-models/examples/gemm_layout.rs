use std::time::Instant;
fn run(m: usize, k: usize, n: usize, strided: bool, tiles: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32) * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32) * 0.01).collect();
    let mut c = vec![0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        if tiles <= 1 {
            unsafe {
                let (rs, cs) = if strided { (1isize, k as isize) } else { (n as isize, 1isize) };
                gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize,
                    b.as_ptr(), cs, rs, 0.0f32, 1.0f32, false, false, false, gemm::Parallelism::Rayon(2));
            }
        } else {
            use rayon::prelude::*;
            let tn = n.div_ceil(tiles);
            let cp = c.as_mut_ptr() as usize;
            (0..tiles).into_par_iter().for_each(|t| {
                let n0 = t * tn; let nt = tn.min(n - n0);
                // B tile strided: W rows n0.. in row-major [n,k]
                unsafe {
                    gemm::gemm(m, nt, k, (cp as *mut f32).add(n0), 1, n as isize, false, a.as_ptr(), 1, k as isize,
                        b.as_ptr().add(n0 * k), 1, nt as isize, 0.0f32, 1.0f32, false, false, false, gemm::Parallelism::None);
                }
            });
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}
fn main() {
    for &(m, k, n) in &[(512, 576, 576), (512, 576, 1536), (512, 1536, 576), (512, 576, 49152), (1, 576, 1536)] {
        println!("{m}x{k}x{n}: contiguous {:.0} strided {:.0} tiled4 {:.0} tiled8 {:.0} tiled16 {:.0} GFLOPS", run(m,k,n,false,1), run(m,k,n,true,1), run(m,k,n,true,4), run(m,k,n,true,8), run(m,k,n,true,16));
    }
}
