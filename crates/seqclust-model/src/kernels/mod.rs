//! Fused CPU kernels as candle custom ops, each with a hand-written backward and a test
//! against the same computation in plain candle ops.

pub mod attention;
pub mod layer_norm;
pub mod softmax_ce;

/// Row-major GEMM `C (m×n) = alpha·C + A·B` with explicit strides, on the `gemm` crate
/// (AVX-512/AVX2 chosen at run time), single-threaded: callers parallelise over blocks.
///
/// # Safety
/// The pointers must be valid for the given shapes and strides.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
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
            gemm::Parallelism::None,
        )
    }
}
