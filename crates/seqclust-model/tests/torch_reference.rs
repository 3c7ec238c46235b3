//! Forward/backward reference against PyTorch: the fused GRU layer and Transformer block give
//! the same outputs and gradients as `nn.GRU` and `nn.TransformerEncoderLayer(norm_first=True)`
//! on fixed random weights. The golden values in `fixtures/torch_reference.json` were written by
//! this script (PyTorch 2.x, CPU, float64; run it and redirect stdout to regenerate):
//!
//! ```python
//! import json, torch
//! torch.manual_seed(7)
//! torch.set_default_dtype(torch.float64)  # golden values in double; the Rust side is f32
//! b, t, d, heads, ff = 3, 4, 8, 2, 16
//! # 1 = event, 0 = left padding (sequence 1 has two padded steps, sequence 2 one)
//! mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.float64)
//! x = torch.randn(b, t, d)
//! w = torch.randn(b, t, d)  # loss = sum(y * w)
//! out = {"b": b, "t": t, "d": d, "heads": heads, "ff": ff, "mask": mask.flatten().tolist(),
//!        "x": x.flatten().tolist(), "w": w.flatten().tolist()}
//!
//! # GRU: PyTorch's nn.GRU on each sequence's events only (from h0 = 0); padded steps output 0
//! gru = torch.nn.GRU(d, d, num_layers=1, batch_first=True)
//! xg = x.clone().requires_grad_(True)
//! ys = []
//! for s in range(b):
//!     n = int(mask[s].sum())
//!     y, _ = gru(xg[s:s + 1, t - n:])
//!     ys.append(torch.cat([torch.zeros(1, t - n, d), y], 1))
//! y = torch.cat(ys, 0)
//! (y * w).sum().backward()
//! params = [gru.weight_ih_l0, gru.bias_ih_l0, gru.weight_hh_l0, gru.bias_hh_l0]
//! out["gru"] = {"params": torch.cat([p.detach().flatten() for p in params]).tolist(),
//!               "y": y.detach().flatten().tolist(), "dx": xg.grad.flatten().tolist(),
//!               "dparams": torch.cat([p.grad.flatten() for p in params]).tolist()}
//!
//! # pre-LN Transformer block: nn.TransformerEncoderLayer(norm_first=True), causal, key padding
//! layer = torch.nn.TransformerEncoderLayer(d, heads, dim_feedforward=ff, dropout=0.0,
//!                                          activation="relu", batch_first=True,
//!                                          norm_first=True, layer_norm_eps=1e-6)
//! with torch.no_grad():  # non-trivial LayerNorm affine parameters
//!     for ln in (layer.norm1, layer.norm2):
//!         ln.weight.add_(0.3 * torch.randn(d))
//!         ln.bias.add_(0.3 * torch.randn(d))
//! for causal in (True, False):
//!     vis = mask[:, None, :].expand(b, t, t).clone()
//!     if causal:
//!         vis = vis * torch.tril(torch.ones(t, t))
//!     # a finite bias: fully masked (padding) queries stay finite and are zeroed below
//!     bias = ((1 - vis) * -1e9).repeat_interleave(heads, 0)
//!     xb = x.clone().requires_grad_(True)
//!     layer.zero_grad()
//!     y = layer(xb, src_mask=bias) * mask[:, :, None]
//!     (y * w).sum().backward()
//!     a = layer.self_attn
//!     params = [layer.norm1.weight, layer.norm1.bias, a.in_proj_weight, a.in_proj_bias,
//!               a.out_proj.weight, a.out_proj.bias, layer.norm2.weight, layer.norm2.bias,
//!               layer.linear1.weight, layer.linear1.bias, layer.linear2.weight, layer.linear2.bias]
//!     out["block_causal" if causal else "block_bidirectional"] = {
//!         "params": torch.cat([p.detach().flatten() for p in params]).tolist(),
//!         "y": y.detach().flatten().tolist(), "dx": xb.grad.flatten().tolist(),
//!         "dparams": torch.cat([p.grad.flatten() for p in params]).tolist()}
//! print(json.dumps(out))
//! ```
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use candle_core::{Device, Tensor, Var};
use seqclust_model::kernels::block::{Block, BlockShape, Mode};
use seqclust_model::kernels::gru::Gru;
use serde_json::Value;

fn fixture() -> Value {
    let text = include_str!("fixtures/torch_reference.json");
    serde_json::from_str(text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Asserts `ours ≈ torch` elementwise (f32 against float64 golden values).
fn close(what: &str, ours: &[f32], torch: &[f32]) {
    assert_eq!(ours.len(), torch.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(torch).enumerate() {
        assert!(
            (a - b).abs() <= 2e-5 + 2e-4 * b.abs(),
            "{what}[{i}]: ours {a}, PyTorch {b}"
        );
    }
}

/// Runs `op(x, params)`, takes `loss = Σ y ⊙ w`, and checks y, dx and dparams.
fn check(case: &str, f: &Value, op: impl Fn(&Tensor, &Tensor) -> Tensor) {
    let dev = Device::Cpu;
    let (b, t, d) = (
        f["b"].as_u64().unwrap() as usize,
        f["t"].as_u64().unwrap() as usize,
        f["d"].as_u64().unwrap() as usize,
    );
    let c = &f[case];
    let x = Var::from_vec(floats(&f["x"]), (b, t, d), &dev).unwrap();
    let pv = floats(&c["params"]);
    let p = Var::from_vec(pv.clone(), pv.len(), &dev).unwrap();
    let w = Tensor::from_vec(floats(&f["w"]), (b, t, d), &dev).unwrap();
    let y = op(x.as_tensor(), p.as_tensor());
    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    close(&format!("{case} y"), &flat(&y), &floats(&c["y"]));
    let dx = grads.get(x.as_tensor()).unwrap();
    close(&format!("{case} dx"), &flat(dx), &floats(&c["dx"]));
    let dp = grads.get(p.as_tensor()).unwrap();
    close(
        &format!("{case} dparams"),
        &flat(dp),
        &floats(&c["dparams"]),
    );
}

#[test]
fn gru_layer_matches_pytorch() {
    let f = fixture();
    let mask = floats(&f["mask"]);
    let d = f["d"].as_u64().unwrap() as usize;
    check("gru", &f, |x, p| {
        Gru::apply(x, p, mask.clone(), d, true).unwrap()
    });
}

#[test]
fn transformer_block_matches_pytorch() {
    let f = fixture();
    let mask = floats(&f["mask"]);
    for (case, causal) in [("block_causal", true), ("block_bidirectional", false)] {
        let shape = BlockShape {
            dim: f["d"].as_u64().unwrap() as usize,
            heads: f["heads"].as_u64().unwrap() as usize,
            ff: f["ff"].as_u64().unwrap() as usize,
            causal,
            dropout: 0.0,
        };
        check(case, &f, |x, p| {
            Block::apply(x, p, shape, mask.clone(), None, Mode::Train).unwrap()
        });
    }
}
