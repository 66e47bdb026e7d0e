//! `peloton topology show`: build a schedule exactly as training would and print what it
//! does — the graph, its matchings, MATCHA's probabilities and α, the first rounds, and the
//! spectral gap of the expected mixing matrix — before spending compute on it.

use crate::outln;
use anyhow::{Context, Result};
use peloton_topology::{Directions, GraphSpec, MixingWeights, Protocol, Round, ScheduleConfig};

/// Arguments of `peloton topology show`.
#[derive(clap::Args)]
pub struct ShowArgs {
    /// Base graph: ring, torus[:ROWS], hypercube, complete, star, exponential, er[:P],
    /// regular:DEGREE or file:PATH.
    #[arg(long, default_value = "ring")]
    graph: String,
    /// Number of workers (nodes).
    #[arg(short = 'n', long, default_value_t = 8)]
    n: usize,
    /// Seed of random graphs and of random activations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Schedule kind: static, exponential, bipartite, matchings, matcha, rotation
    /// (default: matcha when --budget is given, else static).
    #[arg(long)]
    schedule: Option<String>,
    /// MATCHA's communication budget C_b ∈ (0, 1].
    #[arg(long)]
    budget: Option<f64>,
    /// Mixing weights of a static graph: uniform, metropolis-hastings, max-degree, best-constant.
    #[arg(long, default_value = "metropolis-hastings")]
    weights: String,
    /// Peers per step of the exponential schedule.
    #[arg(long, default_value_t = 1)]
    peers: usize,
    /// Directions of the exponential schedule: forward or both.
    #[arg(long, default_value = "forward")]
    directions: String,
    /// Relabeled copies of a rotation schedule (rotating the graph's other schedule).
    #[arg(long, default_value_t = 2)]
    copies: usize,
    /// Rounds to print.
    #[arg(long, default_value_t = 4)]
    rounds: u64,
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, value: &str) -> Result<T> {
    toml::Value::String(value.to_string())
        .try_into()
        .map_err(|_| anyhow::anyhow!("unknown {what} '{value}'"))
}

impl ShowArgs {
    fn schedule_config(&self) -> Result<ScheduleConfig> {
        let graph = GraphSpec::parse_short(&self.graph, self.seed)?;
        let kind = self.schedule.clone().unwrap_or_else(|| {
            if self.budget.is_some() {
                "matcha"
            } else {
                "static"
            }
            .into()
        });
        let matcha = || ScheduleConfig::Matcha {
            graph: graph.clone(),
            budget: self.budget.unwrap_or(0.5),
            alpha: None,
        };
        Ok(match kind.as_str() {
            "static" => ScheduleConfig::Static {
                graph: graph.clone(),
                weights: parse_enum::<MixingWeights>("mixing weights", &self.weights)?,
            },
            "exponential" => ScheduleConfig::Exponential {
                peers: self.peers,
                directions: parse_enum::<Directions>("directions", &self.directions)?,
            },
            "bipartite" => ScheduleConfig::Bipartite {},
            "matchings" => ScheduleConfig::Matchings {
                graph: graph.clone(),
                select: None,
            },
            "matcha" => matcha(),
            "rotation" => ScheduleConfig::Rotation {
                base: Box::new(matcha()),
                copies: self.copies,
                seed: self.seed,
            },
            other => anyhow::bail!(
                "unknown schedule '{other}' (static, exponential, bipartite, matchings, matcha, rotation)"
            ),
        })
    }
}

/// The most messages a printed round lists; a dense graph's round has millions (an
/// Erdős–Rényi graph of 4,096 nodes: 8 million), which no one reads.
const MAX_LISTED_MESSAGES: usize = 64;

fn format_round(round: &Round) -> String {
    let links: Vec<String> = round
        .edges
        .iter()
        .take(MAX_LISTED_MESSAGES)
        .map(|e| format!("{}→{} {:.3}", e.from, e.to, e.weight))
        .collect();
    let more = round.edges.len().saturating_sub(MAX_LISTED_MESSAGES);
    match (links.is_empty(), more) {
        (true, _) => "(no communication)".into(),
        (false, 0) => links.join(", "),
        (false, more) => format!("{}, … and {more} more messages", links.join(", ")),
    }
}

/// The most rounds `topology show` prints.
const MAX_ROUNDS: u64 = 100_000;

impl ShowArgs {
    /// Every check of the arguments before a schedule is built; the schedule's configuration.
    pub fn check(&self) -> Result<ScheduleConfig> {
        anyhow::ensure!(self.n >= 1, "--n must be at least 1");
        // The training caps: a schedule is only ever built for a run's workers, and its checks
        // use dense N×N matrices (a ring of 100,000 nodes asked for 80 GB).
        anyhow::ensure!(
            self.n <= crate::config::MAX_SIM_WORKERS,
            "--n {} is more workers than any run takes (the simulator's most, {})",
            self.n,
            crate::config::MAX_SIM_WORKERS
        );
        // Each round is a line of output; more than a screenful of thousands is a typo, and
        // 2^64 rounds would print for ever.
        anyhow::ensure!(
            self.rounds <= MAX_ROUNDS,
            "--rounds {} is more than {MAX_ROUNDS} (each round is one printed line)",
            self.rounds
        );
        self.schedule_config()
    }
}

pub fn show(args: &ShowArgs) -> Result<()> {
    let config = args.check()?;
    let schedule = config
        .build(args.n, args.seed)
        .with_context(|| format!("schedule {}", config.kind()))?;
    outln!("{}", schedule.describe());
    if let ScheduleConfig::Static { graph, .. }
    | ScheduleConfig::Matchings { graph, .. }
    | ScheduleConfig::Matcha { graph, .. } = &config
    {
        let g = graph.build(args.n)?;
        let degrees: Vec<usize> = (0..g.n()).map(|i| g.degree(i)).collect();
        outln!(
            "graph: {} nodes, {} edges, degree {}..{}, {}",
            g.n(),
            g.edges().len(),
            degrees.iter().min().unwrap_or(&0),
            degrees.iter().max().unwrap_or(&0),
            if g.is_connected() {
                "connected"
            } else {
                "DISCONNECTED"
            }
        );
    }
    if let Some(matchings) = schedule.matchings() {
        let probabilities = schedule.matcha().map(|m| m.probabilities.clone());
        outln!("matchings ({}):", matchings.len());
        for (j, m) in matchings.iter().enumerate() {
            let mut edges: Vec<String> = m
                .edges
                .iter()
                .take(MAX_LISTED_MESSAGES)
                .map(|(a, b)| format!("{a}-{b}"))
                .collect();
            if m.edges.len() > MAX_LISTED_MESSAGES {
                edges.push(format!(
                    "… and {} more",
                    m.edges.len() - MAX_LISTED_MESSAGES
                ));
            }
            match &probabilities {
                Some(p) => outln!("  {j:>3}  p = {:.4}  {}", p[j], edges.join(" ")),
                None => outln!("  {j:>3}  {}", edges.join(" ")),
            }
        }
    }
    if let Some(m) = schedule.matcha() {
        let total: f64 = m.probabilities.iter().sum();
        outln!(
            "alpha = {:.6}   expected active matchings per step = {total:.4}   lambda2(E[L]) = {:.6}   rho = {:.6}",
            m.alpha, m.algebraic_connectivity, m.rho
        );
    }
    for protocol in [
        Protocol::PushSum,
        Protocol::DoublyStochastic,
        Protocol::Symmetric,
    ] {
        let verdict = match schedule.check(protocol) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("no: {e}"),
        };
        outln!("fits {protocol:?}: {verdict}");
    }
    outln!("{}", schedule.diagnostics());
    for t in 0..args.rounds {
        outln!("round {t}: {}", format_round(&schedule.round(t)));
    }
    Ok(())
}
