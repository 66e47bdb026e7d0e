//! `peloton train --transport mpi`: this process is one worker of an MPI job
//! (`mpirun -n 4 peloton train --transport mpi ...`; world rank = worker rank).
//!
//! Before training, every rank checks that it can start (config valid, data readable, rank 0's
//! run folder created) and the ranks agree on the resolved experiment and the seed; any
//! failure there is reported by every rank, which then finalizes MPI and exits with code 1.
//! A failure during training on one rank (an error, a panic) ends the whole job through
//! `MPI_Abort` with a line naming the rank. Only rank 0 writes the run folder; the events and
//! results of all ranks are gathered to it at the end, so the folder reads like a threads run.
//! Asynchronous algorithms run on rank 0's service thread (`peloton_mpi::MpiComm::start_services`);
//! rank 0 also evaluates their final average, leader or center model from the gathered outcomes.
//!
//! Checkpoints (synchronous algorithms): every rank writes its worker file and its events so
//! far into rank 0's run folder (its path is broadcast; the folder must be visible to every
//! rank), and rank 0 commits each checkpoint once all of them are there. `mpirun … peloton
//! train --resume RUN_DIR` ([`MpiResume`]) restores each rank's state and events.

/// `peloton train --resume RUN_DIR` of an MPI run: every rank continues from the checkpoint
/// of `step` (`None`: from the start) in `dir`, whose `config.toml` has fingerprint
/// `fingerprint`; rank 0 cuts `metrics.jsonl` back to `metrics_bytes`.
/// Without the `mpi` feature the resume is refused before any field is read.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub struct MpiResume {
    pub dir: std::path::PathBuf,
    pub step: Option<u64>,
    pub metrics_bytes: u64,
    pub fingerprint: u64,
}

/// This process's rank of an MPI job (a run, or the resume of one), writing the run folder on
/// rank 0 and returning it. `external` is this rank's learner factory when a training loop
/// outside peloton trains (`[external]`: `mpirun -n 4 python train.py` with
/// `peloton.run(…, transport="mpi")`); otherwise the config's task builds the learner.
#[cfg(not(feature = "mpi"))]
pub fn train_mpi(
    _config: &crate::config::ExperimentConfig,
    _options: &crate::run_common::TrainOptions,
    _resume: Option<MpiResume>,
    external: Option<&dyn peloton_core::learner::LearnerFactory>,
) -> anyhow::Result<std::path::PathBuf> {
    match external {
        None => anyhow::bail!(
            "this peloton was built without MPI support: rebuild with `cargo build --release -p peloton-cli --features mpi` (needs libopenmpi-dev openmpi-bin libclang-dev) and start it with mpirun"
        ),
        Some(_) => anyhow::bail!(
            "this peloton was built without MPI support: build the Python package with `maturin build --release --features mpi` (needs libopenmpi-dev openmpi-bin libclang-dev) and start it with mpirun"
        ),
    }
}

#[cfg(feature = "mpi")]
pub use imp::train_mpi;

#[cfg(feature = "mpi")]
mod imp {
    use std::path::PathBuf;

    use anyhow::{anyhow, Result};
    use peloton_core::algorithms::LsgdConfig;
    use peloton_core::checkpoint::CheckpointConfig;
    use peloton_core::learner::LearnerFactory;
    use peloton_core::runner::Event;
    use peloton_core::transport::{Communicator, CommunicatorExt};
    use peloton_mpi::{abort_job, is_shared_error, Mpi, MpiComm, NodeLayout};

    use super::MpiResume;
    use crate::config::ExperimentConfig;
    use crate::outln;
    // The ranks compare their resolved configs through the run folder's config fingerprint.
    use crate::run_common::{print_summary, Header, Progress, Recorder, TrainOptions};
    use crate::run_folder::{
        checkpoints_dir, commit_manifest, default_path, fingerprint, RunFolder,
    };

    /// Test hook: `PELOTON_MPI_TEST_PANIC=RANK:STEP` makes that rank panic at its first worker
    /// record at or after STEP (the tests check that the job then ends within seconds).
    const PANIC_HOOK_VAR: &str = "PELOTON_MPI_TEST_PANIC";

    /// Test hook: `PELOTON_MPI_TEST_SLEEP=RANK:STEP:SECONDS` makes that rank sleep once, at its
    /// first worker record at or after STEP (the tests check the watchdog on the others).
    const SLEEP_HOOK_VAR: &str = "PELOTON_MPI_TEST_SLEEP";

    /// How a rank's attempt ended when it did not succeed.
    enum Failure {
        /// Every rank stops here together: finalize MPI and exit with code 1.
        Shared(anyhow::Error),
        /// This rank alone failed while the others may be waiting for it: abort the job.
        Local(anyhow::Error),
    }

    /// See the declaration without the `mpi` feature.
    pub fn train_mpi(
        config: &ExperimentConfig,
        options: &TrainOptions,
        resume: Option<MpiResume>,
        external: Option<&dyn LearnerFactory>,
    ) -> Result<PathBuf> {
        let mpi = if config.algorithm.is_async() {
            Mpi::init_for_services()?
        } else {
            Mpi::init()?
        };
        let rank = mpi.world_rank();
        let outcome = {
            // The checks before training talk on their own communicator, whose traffic
            // counters are not the workers': byte counts then match a threads run.
            let mut setup = mpi.world();
            let mut world = mpi.world();
            // The checks before training wait under the same watchdog as the run (whose
            // communicator `peloton_mpi::run` sets up from the run config).
            setup.set_watchdog(
                config
                    .run_config()
                    .watchdog
                    .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok()),
            );
            train_rank(
                &mpi,
                &mut setup,
                &mut world,
                config,
                options,
                resume.as_ref(),
                external,
            )
        };
        match outcome {
            Ok(path) => Ok(path),
            // Every rank prints its line, then dropping `mpi` finalizes MPI, which every rank
            // reaches: no rank exits (making mpirun end the job) before the others have
            // written their line.
            Err(Failure::Shared(e)) => {
                crate::output::print_error(&e.context(format!("rank {rank}")));
                drop(mpi);
                Err(crate::output::AlreadyReported.into())
            }
            Err(Failure::Local(e)) => abort_job(rank, &format!("{e:#}"), 1),
        }
    }

    /// Applies the MPI job's shape to the config: one worker per rank, and for multi-leader
    /// LSGD without an explicit `group_size` one group per node. Returns notes for rank 0.
    fn adapt(config: &mut ExperimentConfig, world: &MpiComm) -> Vec<String> {
        let mut notes = Vec::new();
        let ranks = world.size();
        if config.workers != ranks {
            notes.push(format!(
                "MPI started {ranks} ranks: running {ranks} workers (one per rank) instead of the config's {}",
                config.workers
            ));
            config.workers = ranks;
        }
        let layout = NodeLayout::detect(world);
        if let Some(lsgd) = config.algorithm.get_mut::<LsgdConfig>() {
            if lsgd.group_size.is_none() && layout.nodes() > 1 {
                match layout.uniform_group_size() {
                    Some(g) => {
                        lsgd.group_size = Some(g);
                        notes.push(format!(
                            "{} nodes of {g} ranks: multi-leader LSGD with one group per node (algorithm.group_size = {g}; set it to override)",
                            layout.nodes()
                        ));
                    }
                    None => notes.push(format!(
                        "{} nodes, but not as equal blocks of consecutive ranks: LSGD keeps one group (set algorithm.group_size to form groups)",
                        layout.nodes()
                    )),
                }
            }
        }
        notes
    }

    /// Rank 0's run folder and its path.
    type Folder = Option<(RunFolder, PathBuf)>;

    /// Everything a rank checks before training; an error here is this rank's alone.
    fn prepare<'a>(
        config: &ExperimentConfig,
        rank: usize,
        options: &TrainOptions,
        resume: Option<&MpiResume>,
        external: Option<&'a dyn LearnerFactory>,
    ) -> Result<(Box<dyn LearnerFactory + 'a>, Folder, u64)> {
        config.validate()?;
        let factory: Box<dyn LearnerFactory + 'a> = match external {
            Some(factory) => Box::new(move |ctx| factory.build(ctx)),
            None => config.factory(config.workers_in_process())?.factory,
        };
        if let Some(r) = resume {
            // Every rank's events up to the checkpoint are there (its worker file was checked
            // with the others' by `train::resume`).
            if let Some(step) = r.step {
                for w in 0..config.workers {
                    let events = peloton_mpi::events_file(&checkpoints_dir(&r.dir), step, w);
                    anyhow::ensure!(
                        events.is_file(),
                        "{} is missing: the checkpoint of step {step} is incomplete",
                        events.display()
                    );
                }
            }
            let folder = if rank == 0 {
                Some((RunFolder::reopen(&r.dir, r.metrics_bytes)?, r.dir.clone()))
            } else {
                None
            };
            return Ok((factory, folder, r.fingerprint));
        }
        let text = config.to_toml()?;
        let folder = if rank == 0 {
            let path = options
                .out
                .clone()
                .unwrap_or_else(|| default_path(config.algorithm.name(), &config.task_name()));
            Some((RunFolder::create(&path, &text)?, path))
        } else {
            None
        };
        Ok((factory, folder, fingerprint(&text)))
    }

    /// One rank's records as they happen, in `RUN_DIR/ranks/rank-R.jsonl` (flushed per
    /// record), for a job that dies before rank 0 writes `metrics.jsonl`. A rank whose host
    /// does not see the run folder streams nothing and says so once.
    struct LiveRecords {
        file: Option<std::fs::File>,
    }

    impl LiveRecords {
        fn dir(run: &std::path::Path) -> PathBuf {
            run.join("ranks")
        }

        /// A resumed run starts the file anew (the checkpoint holds the events before it).
        fn open(run: &std::path::Path, rank: usize) -> Self {
            let dir = Self::dir(run);
            let path = dir.join(format!("rank-{rank}.jsonl"));
            let file = std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::File::create(&path))
                .map_err(|e| {
                    crate::errln!(
                        "note: rank {rank} cannot stream its records to {}: {e} (they reach metrics.jsonl at the end)",
                        path.display()
                    )
                })
                .ok();
            Self { file }
        }

        fn record(&mut self, event: &Event) {
            use std::io::Write;
            let Some(file) = &mut self.file else { return };
            if let Ok(Some(line)) = crate::run_folder::event_line(event) {
                // One write(2) per record, no buffering; a failed write stops the stream.
                if writeln!(file, "{line}").is_err() {
                    self.file = None;
                }
            }
        }
    }

    /// Rank 0's `path` on every rank (collective): checkpoint and streamed record files go
    /// into the run folder, which every rank must see.
    fn broadcast_path(comm: &mut MpiComm, path: Option<&PathBuf>) -> peloton_core::Result<PathBuf> {
        // Bytes travel one per f32 (exact), after their count.
        let bytes = path
            .map(|p| p.display().to_string().into_bytes())
            .unwrap_or_default();
        let mut len = [bytes.len() as f32];
        comm.broadcast(&mut len, 0)?;
        let mut buf: Vec<f32> = bytes.iter().map(|&b| f32::from(b)).collect();
        buf.resize(len[0] as usize, 0.0);
        comm.broadcast(&mut buf, 0)?;
        let text: Vec<u8> = buf.iter().map(|&b| b as u8).collect();
        Ok(PathBuf::from(String::from_utf8_lossy(&text).into_owned()))
    }

    /// Rank 0, once its own file of the checkpoint of `step` is written: waits (under the
    /// watchdog's limit) until every rank's worker file and events are written too, then
    /// commits the checkpoint. Nothing is in `metrics.jsonl` yet: an MPI run writes it at the
    /// end, from the events the checkpoint keeps.
    fn commit_when_complete(
        run: &std::path::Path,
        checkpoints: &CheckpointConfig,
        step: u64,
        workers: usize,
        limit: std::time::Duration,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + limit;
        for w in 0..workers {
            let files = [
                checkpoints.worker_file(step, w),
                peloton_mpi::events_file(&checkpoints.dir, step, w),
            ];
            for f in files {
                while !f.is_file() {
                    anyhow::ensure!(
                        std::time::Instant::now() < deadline,
                        "rank {w} did not write {} within {:.0} s: the checkpoint of step {step} is not committed",
                        f.display(),
                        limit.as_secs_f64()
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        commit_manifest(run, step, 0, checkpoints.fingerprint)
    }

    fn train_rank(
        mpi: &Mpi,
        setup: &mut MpiComm,
        world: &mut MpiComm,
        config: &ExperimentConfig,
        options: &TrainOptions,
        resume: Option<&MpiResume>,
        external: Option<&dyn LearnerFactory>,
    ) -> std::result::Result<PathBuf, Failure> {
        let rank = world.rank();
        let shared = |e: peloton_core::Error| Failure::Shared(e.into());
        let mut config = config.clone();
        let notes = adapt(&mut config, setup);
        let quiet = options.quiet || rank != 0;

        // Every rank learns which ranks could not start, so that all of them stop together.
        let prepared = prepare(&config, rank, options, resume, external);
        let failed = setup
            .gather_scalar(if prepared.is_ok() { 0.0 } else { 1.0 })
            .map_err(shared)?;
        let (factory, folder, hash) = match prepared {
            Err(e) => return Err(Failure::Shared(e)),
            Ok(p) => p,
        };
        let agreed = match failed.iter().position(|&f| f != 0.0) {
            Some(first) => Err(peloton_core::Error::Transport(format!(
                "rank {first} could not start (its error is above); stopping"
            ))),
            None => setup
                .agree("the experiment (a hash of the resolved config.toml)", hash)
                .and_then(|_| setup.agree("the seed", config.seed)),
        };
        let folder = match (agreed, folder) {
            (Ok(()), folder) => folder,
            (Err(e), Some((folder, _))) => {
                // Best effort: the run folder says why nothing ran.
                let _ = Recorder::new(folder).finish(&config, Err(e.to_string()));
                return Err(shared(e));
            }
            (Err(e), None) => return Err(shared(e)),
        };
        if !quiet {
            for note in &notes {
                outln!("note: {note}");
            }
            outln!(
                "MPI: {} ranks, rank 0 on {}",
                world.size(),
                mpi.processor_name()
            );
        }

        let mut run = config.run_config();
        let run_dir = match resume {
            Some(r) => r.dir.clone(),
            None => broadcast_path(setup, folder.as_ref().map(|(_, p)| p)).map_err(shared)?,
        };
        // Rank 0 writes `metrics.jsonl` once every rank's events are gathered; until then each
        // rank streams its own records to the run folder (where this host sees it), so a
        // killed job keeps them.
        let live_records = std::sync::Mutex::new(LiveRecords::open(&run_dir, rank));
        // Checkpoints: every rank writes its own files into rank 0's run folder.
        let committing = if config.checkpoint.is_off() {
            None
        } else {
            let path = run_dir.clone();
            run.checkpoint = Some(CheckpointConfig {
                every: config.checkpoint.every,
                dir: checkpoints_dir(&path),
                fingerprint: hash,
                resume: resume.and_then(|r| r.step),
            });
            Some(path)
        };
        let limit = std::time::Duration::from_secs_f64(run.watchdog.unwrap_or(600.0));
        let commit_error = std::sync::Mutex::new(None::<anyhow::Error>);
        let panic_at = std::env::var(PANIC_HOOK_VAR).ok().and_then(|v| {
            let (r, s) = v.split_once(':')?;
            Some((r.parse::<usize>().ok()?, s.parse::<u64>().ok()?))
        });
        let sleep_at = std::env::var(SLEEP_HOOK_VAR).ok().and_then(|v| {
            let mut parts = v.split(':');
            let r = parts.next()?.parse::<usize>().ok()?;
            let s = parts.next()?.parse::<u64>().ok()?;
            let secs = parts.next()?.parse::<f64>().ok()?;
            Some((r, s, std::time::Duration::try_from_secs_f64(secs).ok()?))
        });
        let slept = std::sync::atomic::AtomicBool::new(false);
        let progress = Progress::new(quiet, run.steps);
        let header = folder.as_ref().map(|(_, path)| Header::new(&config, path));
        let live = |event: &Event| {
            if let (Some((r, s)), Event::Worker(w)) = (panic_at, event) {
                if r == rank && w.step >= s {
                    panic!("injected by {PANIC_HOOK_VAR} at step {}", w.step);
                }
            }
            if let (Some((r, s, pause)), Event::Worker(w)) = (sleep_at, event) {
                if r == rank
                    && w.step >= s
                    && !slept.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    std::thread::sleep(pause);
                }
            }
            if let (Some(path), Some(checkpoints), Event::Checkpoint { step, .. }, 0) =
                (&committing, &run.checkpoint, event, rank)
            {
                if let Err(e) =
                    commit_when_complete(path, checkpoints, *step, config.workers, limit)
                {
                    commit_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                }
            }
            live_records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(event);
            if let Some(header) = &header {
                progress.display(header, event);
            }
        };
        let mut recorder = folder.map(|(f, path)| (Recorder::new(f), path));
        let result = peloton_mpi::run(world, &run, factory.as_ref(), &live, &mut |event| {
            if let Some((r, _)) = &mut recorder {
                r.record(event);
            }
        });
        progress.finish();
        let failure = |e: peloton_core::Error| {
            if is_shared_error(&e) {
                Failure::Shared(e.into())
            } else {
                Failure::Local(e.into())
            }
        };
        let Some((recorder, path)) = recorder else {
            // Ranks other than 0 write nothing; they return rank 0's folder.
            return result.map(|_| run_dir).map_err(failure);
        };
        let report = match result {
            Ok(Some(report)) => report,
            Ok(None) => return Err(Failure::Local(anyhow!("rank 0 received no results"))),
            Err(e) => {
                // Best effort: the folder says why the run failed before the job ends.
                let _ = recorder.finish(&config, Err(e.to_string()));
                return Err(failure(e));
            }
        };
        if let Some(e) = commit_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            let _ = recorder.finish(&config, Err(format!("{e:#}")));
            return Err(Failure::Local(e));
        }
        let last = recorder
            .finish(&config, Ok(&report))
            .map_err(Failure::Local)?;
        // `metrics.jsonl` holds every rank's records now: the streamed copies go.
        let _ = std::fs::remove_dir_all(LiveRecords::dir(&path));
        if !options.quiet {
            print_summary(false, &report, &last, &path);
        }
        Ok(path)
    }
}
