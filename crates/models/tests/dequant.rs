//! ggml block dequantisation: one hand-built block per type with values worked out from the
//! block layout, then random blocks against gguf-py (tests/golden/gguf_dequant.json).

use encore_models::dequant::{dequantize, GgmlType};
use encore_models::golden::{golden_dir, DequantGolden};
use half::f16;

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

#[test]
fn q4_0_block() {
    // d = 0.5; qs[j] = j | (15 - j) << 4
    let mut b = h(0.5).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let x = dequantize(GgmlType::Q4_0, &b);
    assert_eq!(x.len(), 32);
    for j in 0..16 {
        assert_eq!(x[j], (j as f32 - 8.0) * 0.5, "low nibble {j}");
        assert_eq!(x[j + 16], (7.0 - j as f32) * 0.5, "high nibble {j}");
    }
    assert_eq!((x[0], x[15], x[16]), (-4.0, 3.5, 3.5));
}

#[test]
fn q4_1_block() {
    // d = 0.25, m = -1
    let mut b = h(0.25).to_vec();
    b.extend(h(-1.0));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let x = dequantize(GgmlType::Q4_1, &b);
    for j in 0..16 {
        assert_eq!(x[j], j as f32 * 0.25 - 1.0);
        assert_eq!(x[j + 16], (15 - j) as f32 * 0.25 - 1.0);
    }
    assert_eq!((x[0], x[15], x[16], x[31]), (-1.0, 2.75, 2.75, -1.0));
}

#[test]
fn q8_0_block() {
    // d = 2; qs[j] = j - 16 as i8
    let mut b = h(2.0).to_vec();
    b.extend((0..32i32).map(|j| (j - 16) as i8 as u8));
    let x = dequantize(GgmlType::Q8_0, &b);
    let want: Vec<f32> = (0..32).map(|j| (j - 16) as f32 * 2.0).collect();
    assert_eq!(x, want);
}

#[test]
fn q4_k_block() {
    // d = 1, dmin = 0.5. Sub-block scales / mins packed as in get_scale_min_k4:
    //   j < 4: sc = s[j] & 63, m = s[j + 4] & 63
    //   j >= 4: sc = s[j + 4] & 15 | (s[j - 4] >> 6) << 4, m = s[j + 4] >> 4 | (s[j] >> 6) << 4
    let scales: [u8; 12] = [0xC3, 2, 4, 5, 0x45, 1, 0, 7, 0x21, 0x00, 0x3A, 0xFF];
    let sc = [3.0, 2.0, 4.0, 5.0, 49.0, 0.0, 10.0, 15.0]; // 0x21&15 | 3<<4 = 49, 0x3A&15 = 10
    let mn = [5.0, 1.0, 0.0, 7.0, 18.0, 0.0, 3.0, 15.0]; // 0x21>>4 | 1<<4 = 18
    let qs: Vec<u8> = (0..128usize).map(|i| (i % 16) as u8 | ((((i * 7) % 16) as u8) << 4)).collect();
    let mut b = h(1.0).to_vec();
    b.extend(h(0.5));
    b.extend(scales);
    b.extend(&qs);
    let x = dequantize(GgmlType::Q4_K, &b);
    assert_eq!(x.len(), 256);
    // each 64 elements use 32 bytes of qs: low nibbles (sub-block 2c), then high (2c + 1)
    for e in 0..256 {
        let (chunk, within) = (e / 64, e % 64);
        let (sub, q) = if within < 32 {
            (2 * chunk, qs[chunk * 32 + within] & 0xF)
        } else {
            (2 * chunk + 1, qs[chunk * 32 + within - 32] >> 4)
        };
        assert_eq!(x[e], sc[sub] * q as f32 - 0.5 * mn[sub], "element {e}");
    }
    // spot values: e=1: 3*1 - 2.5; e=33: 2*7 - 0.5; e=129: 49*1 - 9; e=255: 15*9 - 7.5
    assert_eq!((x[0], x[1], x[33], x[129], x[255]), (-2.5, 0.5, 13.5, 40.0, 127.5));
}

#[test]
fn q6_k_block() {
    // ql[128], qh[64], scales[16] (i8), d = 0.5 (last two bytes)
    let ql: Vec<u8> = (0..128usize).map(|i| ((i * 37 + 11) % 256) as u8).collect();
    let qh: Vec<u8> = (0..64usize).map(|i| ((i * 91 + 5) % 256) as u8).collect();
    let scales: Vec<i8> = (0..16i32).map(|i| (i * 9 - 70) as i8).collect();
    let mut b = ql.clone();
    b.extend(&qh);
    b.extend(scales.iter().map(|&s| s as u8));
    b.extend(h(0.5));
    assert_eq!(b.len(), 210);
    let x = dequantize(GgmlType::Q6_K, &b);
    // element e: half = e / 128; r = e % 128 = 32 * g + l. Low 4 bits: ql[64*half + l + 32*(g&1)],
    // low nibble for g < 2, high nibble otherwise; high 2 bits: qh[32*half + l] >> 2g;
    // scale: scales[8*half + l/16 + 2g].
    for e in 0..256 {
        let (half, g, l) = (e / 128, (e % 128) / 32, e % 32);
        let lq = ql[64 * half + l + 32 * (g & 1)];
        let low = if g < 2 { lq & 0xF } else { lq >> 4 };
        let high = (qh[32 * half + l] >> (2 * g)) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        let s = scales[8 * half + l / 16 + 2 * g] as f32;
        assert_eq!(x[e], 0.5 * s * q as f32, "element {e}");
    }
    // spot value: e = 0: ql[0] = 11 -> low 11, qh[0] = 5 -> high 1: q = 27 - 32 = -5, scale -70
    assert_eq!(x[0], 0.5 * -70.0 * -5.0);
}

#[test]
fn float_types_and_codes() {
    let b: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(dequantize(GgmlType::F32, &b), vec![1.5, -2.0]);
    assert_eq!(dequantize(GgmlType::F16, &[h(0.25), h(-3.0)].concat()), vec![0.25, -3.0]);
    assert_eq!(dequantize(GgmlType::BF16, &[0x80, 0x3F, 0x00, 0xC0]), vec![1.0, -2.0]);
    for (code, ty) in [
        (0, GgmlType::F32),
        (1, GgmlType::F16),
        (2, GgmlType::Q4_0),
        (3, GgmlType::Q4_1),
        (6, GgmlType::Q5_0),
        (7, GgmlType::Q5_1),
        (8, GgmlType::Q8_0),
        (12, GgmlType::Q4_K),
        (13, GgmlType::Q5_K),
        (14, GgmlType::Q6_K),
        (30, GgmlType::BF16),
    ] {
        assert_eq!(GgmlType::from_code(code), Ok(ty));
    }
    assert!(GgmlType::from_code(11).unwrap_err().contains("Q3_K"));
}

#[test]
fn random_blocks_match_gguf_py() {
    let path = golden_dir().join("gguf_dequant.json");
    let g = DequantGolden::load(&path).unwrap();
    assert_eq!(g.cases.len(), 7, "one case per quantised type");
    for case in &g.cases {
        let ty = GgmlType::from_code(case.code).unwrap();
        assert_eq!(ty.name(), case.type_name);
        let x = dequantize(ty, &case.bytes());
        assert_eq!(x.len(), case.values.len(), "{}", case.type_name);
        for (i, (a, b)) in x.iter().zip(&case.values).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{} element {i}: {a} vs {b} ({} from {})",
                case.type_name,
                path.display(),
                g.generator
            );
        }
    }
}
