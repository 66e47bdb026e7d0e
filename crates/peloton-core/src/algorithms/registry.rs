//! The algorithm registry: one source of truth for every algorithm's name, keys, timing and
//! construction.
//!
//! An algorithm is a config type implementing [`AlgorithmSpec`], declared in the algorithm's
//! own file: its `name` in config files, a one-line summary, whether it is
//! [`Synchronous`] or [`Asynchronous`], its validation against the run, and how to build one
//! worker's state. [`Registration::of`] turns it into a registry entry; the built-in algorithms
//! are the entries of [`builtins`], and a user crate adds its own with [`register`] before it
//! loads a config — the same entry type, the same checks. Everything else comes from the
//! registry:
//!
//! - the serde dispatch of [`AlgorithmConfig`] (`name = "…"` picks the entry; its config type
//!   refuses unknown keys);
//! - `peloton list` ([`Registration::keys`] reads the keys off the config type itself, so the
//!   list cannot drift from what the config accepts);
//! - validation ([`AlgorithmConfig::validate`]);
//! - the runner's choice of loop and event ordering ([`AlgorithmConfig::is_async`], which is
//!   the entry's [`Timing`]: an asynchronous algorithm's `build` must return an
//!   [`AsyncAlgorithm`], so the two cannot disagree).
//!
//! Adding a built-in algorithm is its file, `pub mod` in `algorithms/mod.rs`, and one line in
//! [`builtins`] (see docs/ADDING_AN_ALGORITHM.md).

use std::any::Any;
use std::fmt::Debug;
use std::sync::{LazyLock, PoisonError, RwLock};

use serde::de::{self, DeserializeOwned, Deserializer};
use serde::Serialize;

use super::{Algorithm, AsyncAlgorithm};
use crate::optim::OptimizerConfig;
use crate::Result;

/// What an algorithm's config is checked against and built for: the shape of the run.
#[derive(Debug, Clone, Copy)]
pub struct RunShape<'a> {
    /// N, the number of workers.
    pub workers: usize,
    /// The run seed, the same on every worker (random gossip activations are drawn from it).
    pub seed: u64,
    /// The local optimizer every worker uses.
    pub optimizer: &'a OptimizerConfig,
}

/// Whether the runner synchronizes the workers at every step ([`Synchronous`]) or hands out
/// work through a global counter and lets them run at their own pace ([`Asynchronous`]).
/// Sealed: these two are the runner's two loops.
pub trait Timing: sealed::Sealed + 'static {
    /// True for [`Asynchronous`].
    const ASYNCHRONOUS: bool;
    /// What `build` returns for this timing.
    type Worker;
    /// Wraps a built worker for the runner.
    fn into_worker(worker: Self::Worker) -> Worker;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Synchronous {}
    impl Sealed for super::Asynchronous {}
}

/// Every worker takes the same steps; the hooks of [`Algorithm`] run at every step.
pub struct Synchronous;

/// Workers step at their own pace; see [`super::asynchronous`] and [`AsyncAlgorithm`].
pub struct Asynchronous;

impl Timing for Synchronous {
    const ASYNCHRONOUS: bool = false;
    type Worker = Box<dyn Algorithm>;
    fn into_worker(worker: Self::Worker) -> Worker {
        Worker::Synchronous(worker)
    }
}

impl Timing for Asynchronous {
    const ASYNCHRONOUS: bool = true;
    type Worker = Box<dyn AsyncAlgorithm>;
    fn into_worker(worker: Self::Worker) -> Worker {
        Worker::Asynchronous(worker)
    }
}

/// One worker's built algorithm state, tagged with the loop that drives it.
pub enum Worker {
    Synchronous(Box<dyn Algorithm>),
    Asynchronous(Box<dyn AsyncAlgorithm>),
}

impl Worker {
    /// The hooks every algorithm has (setup, steps, checkpoints, observations).
    pub fn as_algorithm_mut(&mut self) -> &mut dyn Algorithm {
        match self {
            Worker::Synchronous(a) => a.as_mut(),
            Worker::Asynchronous(a) => a.as_mut(),
        }
    }
}

/// An algorithm as the registry knows it: its config type (serde; unknown keys refused with
/// `#[serde(deny_unknown_fields)]`), its name and summary, its timing, its validation and how
/// to build one worker's state. Implemented in the algorithm's own file.
pub trait AlgorithmSpec:
    Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + Sync + 'static
{
    /// `name = "…"` in config files.
    const NAME: &'static str;
    /// One line for `peloton list`.
    const SUMMARY: &'static str;
    /// True when the algorithm keeps a center variable (evaluation model "center").
    const HAS_CENTER: bool = false;
    /// [`Synchronous`] or [`Asynchronous`].
    type Timing: Timing;

    /// Checks the config against the run; every error names the offending key.
    fn validate(&self, _run: &RunShape<'_>) -> Result<()> {
        Ok(())
    }

    /// Builds one worker's state for a model of `len` parameters.
    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<<Self::Timing as Timing>::Worker>;

    /// Configs besides the default (`name` alone) that exercise this algorithm's options and
    /// the state it carries across steps. With the default, they are what the registry-driven
    /// suites run — convergence, termination, determinism, transports agreeing, exact resume,
    /// MPI ≡ threads — on 4 workers, so each must be valid for 4 workers (with plain SGD, or
    /// with Nesterov momentum where the algorithm asks for it).
    fn variants() -> Vec<Self> {
        Vec::new()
    }
}

/// The object-safe face of an [`AlgorithmSpec`], what an [`AlgorithmConfig`] holds.
pub(super) trait DynSpec: Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn is_async(&self) -> bool;
    fn has_center(&self) -> bool;
    fn validate(&self, run: &RunShape<'_>) -> Result<()>;
    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Worker>;
    fn clone_box(&self) -> Box<dyn DynSpec>;
    fn eq_dyn(&self, other: &dyn DynSpec) -> bool;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn as_serialize(&self) -> &dyn erased_serde::Serialize;
}

impl<T: AlgorithmSpec> DynSpec for T {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn is_async(&self) -> bool {
        T::Timing::ASYNCHRONOUS
    }
    fn has_center(&self) -> bool {
        T::HAS_CENTER
    }
    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        AlgorithmSpec::validate(self, run)
    }
    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Worker> {
        AlgorithmSpec::build(self, run, len).map(T::Timing::into_worker)
    }
    fn clone_box(&self) -> Box<dyn DynSpec> {
        Box::new(self.clone())
    }
    fn eq_dyn(&self, other: &dyn DynSpec) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_serialize(&self) -> &dyn erased_serde::Serialize {
        self
    }
}

/// One registry entry, made from an [`AlgorithmSpec`] by [`Registration::of`].
#[derive(Clone, Copy)]
pub struct Registration {
    pub name: &'static str,
    pub summary: &'static str,
    pub asynchronous: bool,
    pub has_center: bool,
    keys: fn() -> Vec<&'static str>,
    variants: fn() -> Vec<Box<dyn DynSpec>>,
    pub(super) parse: fn(toml::Value) -> std::result::Result<Box<dyn DynSpec>, toml::de::Error>,
}

impl Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("asynchronous", &self.asynchronous)
            .field("keys", &self.keys())
            .finish()
    }
}

impl Registration {
    /// The registry entry of the algorithm whose config type is `T`.
    pub fn of<T: AlgorithmSpec>() -> Self {
        Registration {
            name: T::NAME,
            summary: T::SUMMARY,
            asynchronous: T::Timing::ASYNCHRONOUS,
            has_center: T::HAS_CENTER,
            keys: struct_fields::<T>,
            variants: || {
                T::variants()
                    .into_iter()
                    .map(|v| Box::new(v) as Box<dyn DynSpec>)
                    .collect()
            },
            parse: |value| Ok(Box::new(T::deserialize(value)?)),
        }
    }

    /// The keys the config accepts besides `name`, in declaration order, read off the config
    /// type's own deserializer.
    pub fn keys(&self) -> Vec<&'static str> {
        (self.keys)()
    }

    /// The default config (the table holding only `name`, when every key has a default)
    /// and [`AlgorithmSpec::variants`], type-erased; see `Registration::test_configs`.
    pub(super) fn test_specs(&self) -> Vec<Box<dyn DynSpec>> {
        let mut specs: Vec<Box<dyn DynSpec>> = Vec::new();
        if let Ok(default) = (self.parse)(toml::Value::Table(toml::Table::new())) {
            specs.push(default);
        }
        specs.extend((self.variants)());
        specs
    }
}

/// The algorithms that ship with peloton, in the order `peloton list` shows them.
pub fn builtins() -> Vec<Registration> {
    use super::*;
    vec![
        Registration::of::<IndependentConfig>(),
        Registration::of::<AllReduceConfig>(),
        Registration::of::<LocalSgdConfig>(),
        Registration::of::<EasgdConfig>(),
        Registration::of::<EamsgdConfig>(),
        Registration::of::<LsgdConfig>(),
        Registration::of::<DpsgdConfig>(),
        Registration::of::<SgpConfig>(),
        Registration::of::<MatchaConfig>(),
        Registration::of::<AlDsgdConfig>(),
        Registration::of::<choco::ChocoConfig>(),
        Registration::of::<LayeredSgdConfig>(),
        Registration::of::<SlowMoConfig>(),
        Registration::of::<AsyncLsgdConfig>(),
        Registration::of::<AsyncEasgdConfig>(),
        Registration::of::<AsyncEamsgdConfig>(),
        Registration::of::<AdPsgdConfig>(),
    ]
}

static REGISTRY: LazyLock<RwLock<Vec<Registration>>> = LazyLock::new(|| {
    let mut entries = Vec::new();
    for entry in builtins() {
        insert(&mut entries, entry).expect("the built-in algorithms have distinct names");
    }
    RwLock::new(entries)
});

fn insert(entries: &mut Vec<Registration>, entry: Registration) -> Result<()> {
    crate::ensure_config!(
        !entry.name.is_empty()
            && entry
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "algorithm name {:?} must be lowercase letters, digits and dashes",
        entry.name
    );
    crate::ensure_config!(
        entries.iter().all(|e| e.name != entry.name),
        "an algorithm named {:?} is already registered",
        entry.name
    );
    let keys = entry.keys();
    crate::ensure_config!(
        !keys.contains(&"name"),
        "algorithm {:?}: its config cannot have a key named `name` (it selects the algorithm)",
        entry.name
    );
    entries.push(entry);
    Ok(())
}

/// Adds an algorithm to this process's registry, next to the built-in ones, so that configs
/// may name it on every transport (threads, simulator, MPI: each process registers it before
/// it loads its config). Refuses a name already taken.
pub fn register(entry: Registration) -> Result<()> {
    let mut entries = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    insert(&mut entries, entry)
}

/// Every registered algorithm: the built-in ones first, then those added with [`register`].
pub fn registered() -> Vec<Registration> {
    REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The entry named `name`, if one is registered.
pub fn lookup(name: &str) -> Option<Registration> {
    REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|e| e.name == name)
        .copied()
}

/// The one-line error for a name no entry has, in serde's words for an unknown variant.
pub(super) fn unknown_name(name: &str) -> String {
    let names: Vec<String> = registered()
        .iter()
        .map(|e| format!("`{}`", e.name))
        .collect();
    format!(
        "unknown variant `{name}`, expected one of {}",
        names.join(", ")
    )
}

/// The keys a config struct accepts, read off its derived `Deserialize` (which names them when
/// it asks for a struct); empty for a type that does not deserialize as a struct.
fn struct_fields<T: AlgorithmSpec>() -> Vec<&'static str> {
    struct Fields(Vec<&'static str>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<D: std::fmt::Display>(_: D) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Stop> {
            self.0.extend_from_slice(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields = Fields(Vec::new());
    let _ = T::deserialize(&mut fields);
    fields.0
}
