//! Fused CPU kernels as candle custom ops, each with a hand-written backward and a test
//! against the same computation in plain candle ops.

pub mod block;
pub mod gru;
pub mod layer_norm;
pub mod softmax_ce;

/// Row-major GEMM `C (m×n) = alpha·C + A·B` with explicit strides, on the `gemm` crate
/// (AVX-512/AVX2 chosen at run time). The fused kernels run it single-threaded
/// (`Parallelism::None`: they parallelise over blocks); one large product (item scoring)
/// lets gemm split it.
///
/// # Safety
/// The pointers must be valid for the given shapes and strides.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    parallelism: gemm::Parallelism,
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    c_cs: isize,
    accumulate: bool,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            c_cs,
            c_rs,
            accumulate,
            a,
            a_cs,
            a_rs,
            b,
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Buffers for the activations the fused ops keep from forward to backward, recycled across
/// steps: allocating them zeroed each step cost more than some of the kernels (the
/// allocator hands back used memory, which must then be cleared). Bounded in count and size.
static POOL: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
const POOL_BUFFERS: usize = 96;
const POOL_FLOATS: usize = 1 << 28;

/// A buffer of `len` floats with unspecified contents: the caller writes every element
/// before reading it.
pub(crate) fn take_buffer(len: usize) -> Vec<f32> {
    if let Ok(mut pool) = POOL.lock() {
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let mut v = pool.swap_remove(i);
            v.truncate(len);
            return v;
        }
    }
    vec![0.0; len]
}

/// Returns buffers from [`take_buffer`] for reuse.
pub(crate) fn give_buffers(bufs: impl IntoIterator<Item = Vec<f32>>) {
    if let Ok(mut pool) = POOL.lock() {
        for v in bufs {
            let held: usize = pool.iter().map(Vec::len).sum();
            if v.is_empty() || pool.len() >= POOL_BUFFERS || held + v.len() > POOL_FLOATS {
                continue;
            }
            pool.push(v);
        }
    }
}

/// The contiguous f32 data of a CPU tensor argument.
pub(crate) fn cpu_f32<'a>(
    op: &str,
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 expected")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input expected")
    };
    Ok(&v[a..b])
}

/// A tensor's values as a flat vector (for the backward passes).
pub(crate) fn flat(t: &candle_core::Tensor) -> candle_core::Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

/// `eˣ` to about 2 ulp, written so that loops over it vectorise (Cephes' polynomial on a
/// range reduction by ln 2). Inputs are clamped to [−86, 88]; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer
    let xc = x.clamp(-86.0, 88.0);
    let t = xc * std::f32::consts::LOG2_E + SHIFTER;
    let k = t - SHIFTER;
    let ki = t.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let r = xc - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let y = f32::from_bits(e.to_bits().wrapping_add((ki << 23) as u32));
    if x.is_nan() { x } else { y }
}

/// The logistic function on [`exp`].
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh` on [`exp`] (absolute error below 1e-7).
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp(2.0 * x))
}

/// `y (rows × out) = x (rows × inp) · Wᵀ + b` for row-major `x`, `W (out × inp)`, `y`.
pub(crate) fn linear_fwd(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (rows, inp, out): (usize, usize, usize),
    y: &mut [f32],
) {
    assert!(x.len() >= rows * inp && w.len() >= out * inp && b.len() >= out);
    assert!(y.len() >= rows * out);
    for r in y[..rows * out].chunks_exact_mut(out) {
        r.copy_from_slice(&b[..out]);
    }
    if rows == 0 || out == 0 || inp == 0 {
        return;
    }
    // SAFETY: the slices hold the shapes asserted above.
    unsafe {
        gemm_f32(
            gemm::Parallelism::None,
            rows,
            out,
            inp,
            y.as_mut_ptr(),
            out as isize,
            1,
            true,
            x.as_ptr(),
            inp as isize,
            1,
            w.as_ptr(),
            1,
            inp as isize,
        );
    }
}

/// `dx (rows × inp) (+)= dy (rows × out) · W` for a layer [`linear_fwd`].
pub(crate) fn linear_dx(
    dy: &[f32],
    w: &[f32],
    (rows, inp, out): (usize, usize, usize),
    dx: &mut [f32],
    accumulate: bool,
) {
    assert!(dy.len() >= rows * out && w.len() >= out * inp && dx.len() >= rows * inp);
    if rows == 0 || inp == 0 {
        return;
    }
    if out == 0 {
        if !accumulate {
            dx[..rows * inp].fill(0.0);
        }
        return;
    }
    // SAFETY: the slices hold the shapes asserted above.
    unsafe {
        gemm_f32(
            gemm::Parallelism::None,
            rows,
            inp,
            out,
            dx.as_mut_ptr(),
            inp as isize,
            1,
            accumulate,
            dy.as_ptr(),
            out as isize,
            1,
            w.as_ptr(),
            inp as isize,
            1,
        );
    }
}

/// `dW (out × inp) += dyᵀ · x` and `db (out) += Σ dy` for a layer [`linear_fwd`].
pub(crate) fn linear_dw(
    dy: &[f32],
    x: &[f32],
    (rows, inp, out): (usize, usize, usize),
    dw: &mut [f32],
    db: &mut [f32],
) {
    assert!(dy.len() >= rows * out && x.len() >= rows * inp);
    assert!(dw.len() >= out * inp && db.len() >= out);
    for r in dy[..rows * out].chunks_exact(out) {
        add_assign(&mut db[..out], r);
    }
    if rows == 0 || out == 0 || inp == 0 {
        return;
    }
    // SAFETY: the slices hold the shapes asserted above.
    unsafe {
        gemm_f32(
            gemm::Parallelism::None,
            out,
            inp,
            rows,
            dw.as_mut_ptr(),
            inp as isize,
            1,
            true,
            dy.as_ptr(),
            1,
            out as isize,
            x.as_ptr(),
            inp as isize,
            1,
        );
    }
}

/// `Σ f(aᵢ, bᵢ, cᵢ)` with 16 independent accumulators, so that the loop vectorises (a plain
/// float sum is a serial dependency chain).
#[inline(always)]
pub(crate) fn sum_map3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    const L: usize = 16;
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [0f32; L];
    for ((ca, cb), cc) in a
        .chunks_exact(L)
        .zip(b.chunks_exact(L))
        .zip(c.chunks_exact(L))
    {
        for l in 0..L {
            acc[l] += f(ca[l], cb[l], cc[l]);
        }
    }
    let tail = n - n % L;
    let mut s = 0f32;
    for i in tail..n {
        s += f(a[i], b[i], c[i]);
    }
    acc.iter().sum::<f32>() + s
}

/// `Σ f(aᵢ, bᵢ)` as [`sum_map3`].
#[inline(always)]
pub(crate) fn sum_map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    sum_map3(a, b, b, |x, y, _| f(x, y))
}

/// `Σ f(aᵢ)` as [`sum_map3`].
#[inline(always)]
pub(crate) fn sum_map(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    sum_map3(a, a, a, |x, _, _| f(x))
}

/// `a += b` elementwise.
#[inline]
pub(crate) fn add_assign(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

/// Sums per-chunk partial gradients in chunk order (deterministic for any thread count).
pub(crate) fn sum_parts(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    for p in &parts {
        add_assign(&mut out, p);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_math_matches_std() {
        let mut worst = 0f32;
        for i in -20_000..=20_000 {
            let x = i as f32 * 4e-3;
            let (a, b) = (super::exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            assert!(
                (super::sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 1e-6,
                "σ({x})"
            );
            assert!((super::tanh(x) - x.tanh()).abs() < 2e-7, "tanh({x})");
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(super::exp(-1000.0).min(1e-30), super::exp(-1000.0));
        assert!(super::exp(1000.0).is_finite());
        assert!(super::exp(f32::NAN).is_nan());
    }
}
