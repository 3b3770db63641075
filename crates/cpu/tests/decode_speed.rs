//! How fast the CPU backend decodes a SmolLM2-135M-shaped model in f32 / bf16 (random weights,
//! the op sequence of one Llama decode step). Ignored by default; run with
//! `cargo test --release -p encore-cpu --test decode_speed -- --ignored --nocapture`.

use encore_cpu::Cpu;
use encore_tensor::rope::{tables, RopeScaling};
use encore_tensor::testing::Rng;
use encore_tensor::{AttentionParams, Backend, BinaryOp, DType, HostTensor, Tensor};
use std::time::Instant;

// SmolLM2-135M: C=576, I=1536, L=30, H=9, Hkv=3, D=64, V=49152, tied embeddings.
const C: usize = 576;
const I: usize = 1536;
const L: usize = 30;
const H: usize = 9;
const HKV: usize = 3;
const D: usize = 64;
const V: usize = 49152;
const S: usize = 512;

struct Layer {
    attn_norm: Tensor<Cpu>,
    // HF Linear weights are [out, in]; the step multiplies by their transposed view.
    q: Tensor<Cpu>,
    k: Tensor<Cpu>,
    v: Tensor<Cpu>,
    o: Tensor<Cpu>,
    mlp_norm: Tensor<Cpu>,
    gate: Tensor<Cpu>,
    up: Tensor<Cpu>,
    down: Tensor<Cpu>,
    k_cache: Tensor<Cpu>,
    v_cache: Tensor<Cpu>,
}

#[test]
#[ignore]
fn smollm2_135m_f32_decode_step() {
    decode(DType::F32);
}

#[test]
#[ignore]
fn smollm2_135m_bf16_decode_step() {
    decode(DType::BF16);
}

fn decode(dt: DType) {
    let b = Cpu;
    let mut rng = Rng::fresh("decode_speed");
    let mut weight = |dims: &[usize]| {
        let n: usize = dims.iter().product();
        let s = 1.0 / (dims[dims.len() - 1] as f32).sqrt();
        Cpu.tensor(&HostTensor::from_f32_as(dims, &rng.vec(n, -s, s), dt)).unwrap()
    };
    let embed = weight(&[V, C]);
    let layers: Vec<Layer> = (0..L)
        .map(|_| Layer {
            attn_norm: weight(&[C]),
            q: weight(&[H * D, C]),
            k: weight(&[HKV * D, C]),
            v: weight(&[HKV * D, C]),
            o: weight(&[C, H * D]),
            mlp_norm: weight(&[C]),
            gate: weight(&[I, C]),
            up: weight(&[I, C]),
            down: weight(&[C, I]),
            k_cache: b.zeros(dt, &[S, HKV, D]).unwrap(),
            v_cache: b.zeros(dt, &[S, HKV, D]).unwrap(),
        })
        .collect();
    let final_norm = weight(&[C]);
    let (cos, sin) = tables(D, S, 100000.0, &RopeScaling::None);
    let cos = b.tensor(&HostTensor::from_f32(&[S, D / 2], &cos)).unwrap();
    let sin = b.tensor(&HostTensor::from_f32(&[S, D / 2], &sin)).unwrap();
    let z = |dims: &[usize]| b.zeros(dt, dims).unwrap();
    let (x, xn, q, k, v, att, mlp_g, mlp_u) = (
        z(&[1, C]),
        z(&[1, C]),
        z(&[1, H * D]),
        z(&[1, HKV * D]),
        z(&[1, HKV * D]),
        z(&[1, H * D]),
        z(&[1, I]),
        z(&[1, I]),
    );
    let (q_rot, k_rot, act) = (z(&[1, H * D]), z(&[1, HKV * D]), z(&[1, I]));
    let (proj, logits, next) = (z(&[1, C]), z(&[1, V]), b.zeros(DType::U32, &[1]).unwrap());
    let params = AttentionParams { scale: 1.0 / (D as f32).sqrt(), sliding_window: 0, block_size: S as u32 };
    let table = b.tensor(&HostTensor::from_i32(&[1, 1], &[0])).unwrap(); // one block: the whole cache
    let t = |w: &Tensor<Cpu>| w.transpose(0, 1).unwrap();
    let heads = |x: &Tensor<Cpu>, h: usize| x.reshape(&[1, h, D]).unwrap();

    let mut token = 1u32;
    let mut times = Vec::new();
    for pos in 0..24 {
        let start = Instant::now();
        let ids = b.tensor(&HostTensor::from_u32(&[1], &[token])).unwrap();
        let p = b.tensor(&HostTensor::from_i32(&[1], &[pos])).unwrap();
        let zero = b.tensor(&HostTensor::from_i32(&[1], &[0])).unwrap();
        b.embedding(&ids, &embed, &x).unwrap();
        for l in &layers {
            b.rms_norm(&x, &l.attn_norm, 1e-5, &xn).unwrap();
            b.matmul(&xn, &t(&l.q), &q).unwrap();
            b.matmul(&xn, &t(&l.k), &k).unwrap();
            b.matmul(&xn, &t(&l.v), &v).unwrap();
            b.rope(&heads(&q, H), &cos, &sin, &p, &heads(&q_rot, H)).unwrap();
            b.rope(&heads(&k, HKV), &cos, &sin, &p, &heads(&k_rot, HKV)).unwrap();
            b.kv_write(&heads(&k_rot, HKV), &heads(&v, HKV), &l.k_cache, &l.v_cache, &p).unwrap();
            b.attention(&heads(&q_rot, H), &l.k_cache, &l.v_cache, &table, &zero, &p, params, &heads(&att, H)).unwrap();
            b.matmul(&att, &t(&l.o), &proj).unwrap();
            b.binary(BinaryOp::Add, &x, &proj, &x).unwrap();
            b.rms_norm(&x, &l.mlp_norm, 1e-5, &xn).unwrap();
            b.matmul(&xn, &t(&l.gate), &mlp_g).unwrap();
            b.matmul(&xn, &t(&l.up), &mlp_u).unwrap();
            b.silu_mul(&mlp_g, &mlp_u, &act).unwrap();
            b.matmul(&act, &t(&l.down), &proj).unwrap();
            b.binary(BinaryOp::Add, &x, &proj, &x).unwrap();
        }
        b.rms_norm(&x, &final_norm, 1e-5, &xn).unwrap();
        b.matmul(&xn, &t(&embed), &logits).unwrap();
        b.argmax(&logits, &next).unwrap();
        token = b.download(&next).unwrap().to_u32().unwrap()[0];
        assert!((token as usize) < V);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    eprintln!(
        "SmolLM2-135M shape, {dt}, batch 1, context <= 24, {} rayon threads: median {median:.1} ms/token ({:.1} tokens/s)",
        rayon::current_num_threads(),
        1e3 / median
    );
}
