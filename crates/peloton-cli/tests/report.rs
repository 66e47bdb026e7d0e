//! End-to-end tests of `peloton report`: two tiny real runs (threads and simulated) compared
//! in SVG plots and a Markdown summary, hand-written run folders, and bad inputs that must end
//! with one clear line on stderr and a non-zero exit.

mod common;

use common::{fails, peloton};

/// A fresh, existing scratch folder.
fn scratch(name: &str) -> PathBuf {
    let dir = common::scratch(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
use std::path::{Path, PathBuf};

/// Runs `peloton` and asserts success.
fn ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = peloton(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const PLOTS: [&str; 6] = [
    "test_error_vs_time.svg",
    "test_error_vs_steps.svg",
    "train_loss_vs_time.svg",
    "bytes_vs_time.svg",
    "consensus_vs_steps.svg",
    "leader_vs_steps.svg",
];

fn train(dir: &Path, extra: &[&str]) {
    let mut args = vec![
        "train",
        "-q",
        "--problem",
        "softmax",
        "--workers",
        "3",
        "--steps",
        "30",
        "--eval-every",
        "10",
        "-o",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

#[test]
fn report_compares_a_threads_run_and_a_simulated_run() {
    let base = scratch("runs");
    let threads = base.join("threads-run");
    let sim = base.join("sim-run");
    train(&threads, &[]);
    train(&sim, &["--transport", "sim", "--cluster", "ethernet-1g"]);

    // Both runs, with labels: every plot overlays both, and the time axis says the clocks mix.
    let out = base.join("both");
    let stdout = ok(&[
        "report".as_ref(),
        threads.as_os_str(),
        sim.as_os_str(),
        "--label".as_ref(),
        "Threads A".as_ref(),
        "--label".as_ref(),
        "Simulated B".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(stdout.contains("summary.md"), "{stdout}");
    for plot in PLOTS {
        let svg = read(&out.join(plot));
        assert!(svg.contains("<svg"), "{plot} is not an SVG");
        assert!(
            svg.contains("Threads A") && svg.contains("Simulated B"),
            "{plot} lacks a legend label"
        );
        // A PNG of the same plot beside it, the SVG's 960×600 (width and height are the
        // big-endian words at bytes 16..24 of a PNG's IHDR).
        let png = std::fs::read(out.join(plot).with_extension("png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}: not a PNG");
        let word = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
        assert_eq!((word(16), word(20)), (960, 600), "{plot}");
    }
    for plot in [
        "test_error_vs_time.svg",
        "train_loss_vs_time.svg",
        "bytes_vs_time.svg",
    ] {
        let svg = read(&out.join(plot));
        assert!(
            svg.contains("time (s, simulated or wall-clock per run)"),
            "{plot} lacks the mixed time axis label"
        );
    }
    assert!(read(&out.join("test_error_vs_steps.svg")).contains("test error (1 − accuracy)"));
    let md = read(&out.join("summary.md"));
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Run "))
        .collect();
    assert_eq!(rows.len(), 2, "{md}");
    assert!(
        rows[0].starts_with("| Threads A | lsgd | softmax | threads | 3 | 30 |"),
        "{md}"
    );
    assert!(
        rows[1].starts_with("| Simulated B | lsgd | softmax | sim | 3 | 30 |"),
        "{md}"
    );
    assert!(
        rows.iter()
            .all(|r| r.contains('%') && r.ends_with("| ok |")),
        "{md}"
    );
    for plot in PLOTS {
        assert!(md.contains(&format!("[{plot}]({plot})")), "{md}");
    }
    assert!(md.contains("the best accuracy every run reaches"), "{md}");

    // One clock each; default labels (folder names) and default output (next to the run).
    ok(&["report".as_ref(), sim.as_os_str()]);
    let svg = read(&base.join("report/test_error_vs_time.svg"));
    assert!(svg.contains("simulated time (s)") && svg.contains("sim-run"));
    assert!(!svg.contains("wall-clock"));
    let alone = base.join("threads-alone");
    ok(&[
        "report".as_ref(),
        threads.as_os_str(),
        "-o".as_ref(),
        alone.as_os_str(),
        "--target-accuracy".as_ref(),
        "0.2".as_ref(),
    ]);
    let svg = read(&alone.join("train_loss_vs_time.svg"));
    assert!(svg.contains("wall-clock time (s)") && svg.contains("threads-run"));
    let md = read(&alone.join("summary.md"));
    assert!(md.contains("≥ 20.00% (set with --target-accuracy)"), "{md}");
    let _ = std::fs::remove_dir_all(&base);
}

/// A run folder written by hand: no config.toml or summary.json, a diverged (null) loss, a
/// record type from the future, evaluations without accuracy and no leader or consensus.
#[test]
fn report_reads_a_minimal_run_folder() {
    let base = scratch("minimal");
    let run = base.join("hand");
    std::fs::create_dir_all(&run).unwrap();
    let mut lines = vec![r#"{"type":"start","params":4,"steps":3,"workers":2}"#.to_string()];
    for step in 1..=3u64 {
        for worker in 0..2 {
            lines.push(format!(
                r#"{{"type":"worker","step":{step},"worker":{worker},"loss":{},"metric":1.0,"lr":0.1,"bytes_sent":{},"bytes_received":0,"seconds":{}}}"#,
                if step == 3 { "null".to_string() } else { format!("{}", 1.0 / step as f64) },
                100 * step,
                0.5 * step as f64
            ));
        }
        lines.push(format!(
            r#"{{"type":"eval","step":{step},"model":"average","loss":{},"seconds":{}}}"#,
            1.0 / step as f64,
            0.5 * step as f64
        ));
    }
    lines.push(r#"{"type":"something-new","step":3}"#.into());
    std::fs::write(run.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    let out = base.join("out");
    ok(&[
        "report".as_ref(),
        run.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    let svg = read(&out.join("test_error_vs_steps.svg"));
    assert!(svg.contains("<svg") && svg.contains("test loss") && svg.contains("hand"));
    assert!(read(&out.join("train_loss_vs_time.svg")).contains("wall-clock time (s)"));
    assert!(!out.join("leader_vs_steps.svg").exists());
    assert!(!out.join("consensus_vs_steps.svg").exists());
    let md = read(&out.join("summary.md"));
    assert!(
        md.contains("| hand | ? | ? | threads | 2 | 3 | 0.3333 | — | — | — | — | 1.5000 | 300 bytes | 1.5000 | incomplete |"),
        "{md}"
    );
    assert!(!md.contains("leader_vs_steps"), "{md}");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn bad_inputs_end_with_one_clear_line() {
    let base = scratch("bad");
    fails(&["report"], "no run folders given");
    let missing = base.join("missing");
    fails(
        &["report".as_ref(), missing.as_os_str()],
        &format!("run folder {} does not exist", missing.display()),
    );
    let empty = base.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails(
        &["report".as_ref(), empty.as_os_str()],
        "has no metrics.jsonl",
    );

    let corrupt = base.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(
        corrupt.join("metrics.jsonl"),
        "{\"type\":\"start\",\"params\":4,\"steps\":3,\"workers\":2}\n\
         {\"type\":\"worker\",\"step\":1,\"worker\":0,\"loss\":0.5,\"metr\n",
    )
    .unwrap();
    fails(
        &["report".as_ref(), corrupt.as_os_str()],
        &format!(
            "{} line 2: not a valid record",
            corrupt.join("metrics.jsonl").display()
        ),
    );
    // Valid JSON that is not a record of its type.
    std::fs::write(
        corrupt.join("metrics.jsonl"),
        "{\"type\":\"worker\",\"step\":1}\n",
    )
    .unwrap();
    fails(
        &["report".as_ref(), corrupt.as_os_str()],
        "metrics.jsonl line 1: not a valid record: missing field",
    );
    std::fs::write(corrupt.join("metrics.jsonl"), "").unwrap();
    std::fs::write(corrupt.join("config.toml"), "workers = 3\n[transport\n").unwrap();
    fails(
        &["report".as_ref(), corrupt.as_os_str()],
        &format!(
            "{} line 2: not valid TOML",
            corrupt.join("config.toml").display()
        ),
    );
    fails(
        &[
            "report".as_ref(),
            empty.as_os_str(),
            "--label".as_ref(),
            "a".as_ref(),
            "--label".as_ref(),
            "b".as_ref(),
        ],
        "2 --label values for 1 run folders",
    );
    fails(
        &[
            "report".as_ref(),
            empty.as_os_str(),
            "--target-accuracy".as_ref(),
            "90".as_ref(),
        ],
        "--target-accuracy must be a fraction in [0, 1]",
    );
    let _ = std::fs::remove_dir_all(&base);
}
