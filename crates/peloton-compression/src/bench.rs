//! Speed of the compressors behind `peloton bench`: encoding and decoding a buffer of `f32`
//! against `copy_from_slice` of the same buffer, measured in the same run.
//!
//! Bandwidth here is the *input* convention: the buffer's f32 bytes / time, for the copy too,
//! so `ratio` = t_memcpy / t_encode (or t_decode). A ratio of 0.5 means compressing costs two
//! copies of the buffer. Each time is the median of `repeats` calls after one warm-up call.

use std::hint::black_box;
use std::time::Instant;

use crate::{build, Compressor, Kind};

/// One compressor's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub name: String,
    /// Encoded bytes / f32 bytes.
    pub size_ratio: f64,
    pub encode_seconds: f64,
    pub decode_seconds: f64,
    /// t_memcpy / t_encode.
    pub encode_ratio: f64,
    /// t_memcpy / t_decode.
    pub decode_ratio: f64,
}

/// The compressors measured: fp16, bf16, int8 (blocks of 256), top-1% and random-1%.
pub fn kinds() -> Vec<Kind> {
    vec![
        Kind::Fp16,
        Kind::Bf16,
        Kind::Int8 { block: 256 },
        Kind::TopK { fraction: 0.01 },
        Kind::RandomK { fraction: 0.01 },
    ]
}

/// Measures every compressor of [`kinds`] on a buffer of `bytes` bytes (`bytes / 4` values
/// drawn from a smooth deterministic signal): the memcpy time first, then one row each.
pub fn compressors(bytes: usize, repeats: usize) -> (f64, Vec<Row>) {
    let n = (bytes / 4).max(1);
    let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.001).sin() * 3.0).collect();
    let mut copy = vec![0.0f32; n];
    let memcpy = median_seconds(repeats, || {
        black_box(copy.as_mut_slice()).copy_from_slice(black_box(&x));
    });
    let rows = kinds()
        .iter()
        .map(|kind| {
            let mut c: Box<dyn Compressor> = build(kind, 7).expect("a compressor");
            let mut message = Vec::new();
            let encode = median_seconds(repeats, || {
                c.encode(black_box(&x), &mut message);
                black_box(&message);
            });
            let decode = median_seconds(repeats, || {
                c.decode(black_box(&message), &mut copy)
                    .expect("its own message");
                black_box(&copy);
            });
            Row {
                name: label(kind),
                size_ratio: message.len() as f64 / (4 * n) as f64,
                encode_seconds: encode,
                decode_seconds: decode,
                encode_ratio: memcpy / encode,
                decode_ratio: memcpy / decode,
            }
        })
        .collect::<Vec<_>>();
    let mut rows = rows;
    rows.push(powersgd(&x, 2, memcpy, repeats));
    (memcpy, rows)
}

/// PowerSGD rank `rank` on `x` taken as one 1024-row matrix (a large layer's shape): one whole
/// step (M·Q, Gram–Schmidt, Mᵀ·P, P·Qᵀ and the residual) with a one-worker all-reduce, so the
/// time is the compute alone. Its "decode" is part of that step: no separate time.
fn powersgd(x: &[f32], rank: usize, memcpy: f64, repeats: usize) -> Row {
    let rows = 1024.min(x.len());
    let cols = x.len() / rows;
    let len = rows * cols;
    let shape = [rows, cols];
    let mut plan = crate::PowerSgd::new(&[(0, &shape[..])], len, rank, true, 7)
        .expect("a matrix with room to gain");
    let (first, second) = plan.message_lens();
    let mut buf = x[..len].to_vec();
    let step = median_seconds(repeats, || {
        buf.copy_from_slice(&x[..len]);
        plan.all_reduce(black_box(&mut buf), 1, |_| Ok::<(), ()>(()))
            .expect("no all-reduce to fail");
        black_box(&buf);
    });
    Row {
        name: label(&Kind::PowerSgd { rank }),
        size_ratio: (first + second) as f64 / len as f64,
        encode_seconds: step,
        decode_seconds: f64::NAN,
        encode_ratio: memcpy / step,
        decode_ratio: f64::NAN,
    }
}

fn label(kind: &Kind) -> String {
    match kind {
        Kind::None => "none".into(),
        Kind::Fp16 => "fp16".into(),
        Kind::Bf16 => "bf16".into(),
        Kind::Int8 { block } => format!("int8 (block {block})"),
        Kind::TopK { fraction } => format!("topk ({}%)", fraction * 100.0),
        Kind::RandomK { fraction } => format!("randomk ({}%)", fraction * 100.0),
        Kind::PowerSgd { rank } => format!("powersgd (rank {rank})"),
    }
}

/// An aligned plain-text table of the rows, after the memcpy line.
pub fn format_table(memcpy: f64, rows: &[Row]) -> String {
    let mut out = format!(
        "{:<20} {:>8} {:>11} {:>8} {:>11} {:>8}\n",
        "compressor", "size", "encode", "ratio", "decode", "ratio"
    );
    out.push_str(&format!(
        "{:<20} {:>8} {:>11} {:>8.2} {:>11} {:>8.2}\n",
        "memcpy (baseline)",
        "1.000",
        fmt_seconds(memcpy),
        1.0,
        fmt_seconds(memcpy),
        1.0
    ));
    for r in rows {
        let (decode, decode_ratio) = if r.decode_seconds.is_nan() {
            ("—".to_string(), "—".to_string())
        } else {
            (
                fmt_seconds(r.decode_seconds),
                format!("{:.2}", r.decode_ratio),
            )
        };
        out.push_str(&format!(
            "{:<20} {:>8.3} {:>11} {:>8.2} {:>11} {:>8}\n",
            r.name,
            r.size_ratio,
            fmt_seconds(r.encode_seconds),
            r.encode_ratio,
            decode,
            decode_ratio
        ));
    }
    out
}

fn fmt_seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

fn median_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let m = times.len() / 2;
    let mid = if times.len() % 2 == 1 {
        times[m]
    } else {
        0.5 * (times[m - 1] + times[m])
    };
    mid.max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compressor_has_a_row_with_its_size() {
        let (memcpy, rows) = compressors(1 << 16, 2);
        assert!(memcpy > 0.0);
        let sizes: Vec<f64> = rows.iter().map(|r| r.size_ratio).collect();
        // 16,384 values: fp16/bf16 half; int8 1 + 8/256 bytes per 4; top-k 164 × 8 bytes;
        // random-k 8 + 164 × 4 bytes.
        assert_eq!(sizes[0], 0.5);
        assert_eq!(sizes[1], 0.5);
        assert_eq!(sizes[2], (16_384.0 + 8.0 * 64.0) / 65_536.0);
        assert_eq!(sizes[3], 164.0 * 8.0 / 65_536.0);
        assert_eq!(sizes[4], (8.0 + 164.0 * 4.0) / 65_536.0);
        assert!(format_table(memcpy, &rows).lines().count() == 2 + rows.len());
    }
}
