//! Parity of the row-moving ops: embedding lookup and `kv_write` into cache slots. Both
//! copy rows bit for bit, so the comparison is exact.

use super::inputs::{download, expect_err, i32s, input, View};
use encore_tensor::testing::Rng;
use encore_tensor::{Backend, DType, Error, HostTensor, Tensor};

pub fn embedding_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("embedding");
    let (v, c, t) = (40, 24, 9);
    for dt in DType::FLOATS {
        for tv in [View::Contiguous, View::Offset] {
            let table = input(b, &mut rng, dt, &[v, c], tv, (-1.0, 1.0));
            let mut ids: Vec<u32> = (0..t).map(|_| rng.below(v) as u32).collect();
            ids[3] = ids[1]; // a repeated token
            ids[4] = v as u32 - 1;
            let ids_t = b.tensor(&HostTensor::from_u32(&[t], &ids)).unwrap();
            let out = b.zeros(dt, &[t, c]).unwrap();
            b.embedding(&ids_t, &table.t, &out).unwrap();
            let want: Vec<f32> =
                ids.iter().flat_map(|&id| &table.values[id as usize * c..(id as usize + 1) * c]).copied().collect();
            assert_eq!(download(b, &out), want, "embedding {dt} table {tv:?}");
        }
    }
    let table = b.zeros(DType::F32, &[v, c]).unwrap();
    let ids = b.tensor(&HostTensor::from_u32(&[3], &[0, 1, 2])).unwrap();
    let out = b.zeros(DType::F32, &[3, c]).unwrap();
    expect_err!("embedding ids dtype", b.embedding(&i32s(b, &[0, 1, 2]), &table, &out), Error::DTypeMismatch { .. });
    let table_t = b.zeros(DType::F32, &[c, v]).unwrap().transpose(0, 1).unwrap();
    expect_err!("embedding table layout", b.embedding(&ids, &table_t, &out), Error::LayoutRequired { .. });
    expect_err!(
        "embedding dst",
        b.embedding(&ids, &table, &b.zeros(DType::F32, &[3, c + 1]).unwrap()),
        Error::ShapeMismatch { .. }
    );
    let out_h = b.zeros(DType::BF16, &[3, c]).unwrap();
    expect_err!("embedding dst dtype", b.embedding(&ids, &table, &out_h), Error::DTypeMismatch { .. });
}

pub fn kv_write_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("kv_write");
    let (s, hkv, d, t) = (16, 2, 8, 5);
    for dt in DType::FLOATS {
        for (kv, vv) in [
            (View::Contiguous, View::Contiguous),
            (View::Narrowed, View::Offset),
            (View::SwapLeading, View::Transposed),
        ] {
            let what = format!("kv_write {dt} k {kv:?} v {vv:?}");
            let kc = input(b, &mut rng, dt, &[s, hkv, d], View::Contiguous, (-5.0, 5.0));
            let vc = input(b, &mut rng, dt, &[s, hkv, d], View::Offset, (-5.0, 5.0));
            let k = input(b, &mut rng, dt, &[t, hkv, d], kv, (-1.0, 1.0));
            let v = input(b, &mut rng, dt, &[t, hkv, d], vv, (-1.0, 1.0));
            // distinct slots, one padded row
            let mut free: Vec<i32> = (0..s as i32).collect();
            let mut slots: Vec<i32> = (0..t).map(|_| free.swap_remove(rng.below(free.len()))).collect();
            slots[1] = -1;
            b.kv_write(&k.t, &v.t, &kc.t, &vc.t, &i32s(b, &slots)).unwrap();
            let row = hkv * d;
            for (cache, new, name) in [(&kc, &k, "k"), (&vc, &v, "v")] {
                let mut want = cache.values.clone();
                for (i, &slot) in slots.iter().enumerate() {
                    if slot >= 0 {
                        let slot = slot as usize;
                        want[slot * row..(slot + 1) * row].copy_from_slice(&new.values[i * row..(i + 1) * row]);
                    }
                }
                assert_eq!(download(b, &cache.t), want, "{what}: {name} cache");
            }
        }
    }
    let f = |dims: &[usize]| b.zeros(DType::F32, dims).unwrap();
    let (k, cache, slots) = (f(&[2, hkv, d]), f(&[s, hkv, d]), i32s::<B>(b, &[0, 1]));
    let strided_cache = f(&[hkv, s, d]).transpose(0, 1).unwrap();
    expect_err!(
        "kv_write cache layout",
        b.kv_write(&k, &k, &strided_cache, &cache, &slots),
        Error::LayoutRequired { .. }
    );
    expect_err!(
        "kv_write head dim",
        b.kv_write(&k, &k, &f(&[s, hkv, d + 1]), &f(&[s, hkv, d + 1]), &slots),
        Error::ShapeMismatch { .. }
    );
    let uslots: Tensor<B> = b.tensor(&HostTensor::from_u32(&[2], &[0, 1])).unwrap();
    expect_err!("kv_write slots dtype", b.kv_write(&k, &k, &cache, &cache, &uslots), Error::DTypeMismatch { .. });
    expect_err!("kv_write slots len", b.kv_write(&k, &k, &cache, &cache, &i32s(b, &[0])), Error::ShapeMismatch { .. });
    let hcache = b.zeros(DType::BF16, &[s, hkv, d]).unwrap();
    expect_err!("kv_write dtype", b.kv_write(&k, &k, &hcache, &hcache, &slots), Error::DTypeMismatch { .. });
}
