//! The simulator transport: real computation, virtual time.
//!
//! Every worker runs on its own thread and does its real work (gradients, mixing); the
//! [`SimComm`] it talks through keeps a virtual clock per worker and prices every operation
//! with the cluster's α-β network model and compute model instead of letting wall-clock time
//! pass. Results and virtual times are a pure function of the config and seed, whatever the
//! host's speed or thread timing:
//!
//! * **Collectives** complete for every member at `max(entry clocks) + cost`, the data reduced
//!   in rank order exactly like the threads transport (so synchronous algorithms end with the
//!   same parameters, bit for bit). No ordering among workers is needed for them.
//! * **Point-to-point**: a message sent at `t` arrives at `t + α + n·β`, later when it queues
//!   behind other messages on a shared NIC ([`crate::cost::Nics`]); a receive completes at
//!   `max(receiver clock, arrival)`.
//! * **Ordering.** The only operations whose outcome depends on other workers' actions are
//!   inter-node sends under NIC contention (who queues first) and `test_recv` (has the message
//!   arrived by now?). A worker performs them only when its `(clock, rank)` is the smallest
//!   among workers that are not blocked — a conservative discrete-event rule: every other
//!   worker's next operation is then at a later virtual time, and a blocked worker wakes no
//!   earlier than the event that wakes it. Everything else (computation included) runs in
//!   parallel on the host's cores.
//! * **Deadlocks** (every unfinished worker blocked) end the run with an error naming what each
//!   worker waits for, instead of hanging.
//! * **Checkpoint cuts** ([`Communicator::checkpoint_cut`]): a worker *parks* in turn order
//!   (at its `(clock, rank)`), drops out of the turn order, and waits without virtual time
//!   passing; when every running worker has parked, the engine's whole state — clocks, NIC
//!   queues, counters, the parameter server, traffic totals and messages in flight — is the
//!   checkpoint's transport state, and everyone goes on. A resumed run puts it back
//!   ([`Communicator::restore_cut`]) before its first step, so it continues exactly.
//! * **Diagnostics** (consensus distance, evaluation averages: [`Communicator::set_diagnostic`])
//!   cost no time, but as collectives they still align the members' clocks to the latest
//!   member, as any real measurement would.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use peloton_core::checkpoint::StateDict;
use peloton_core::transport::{
    check_counter, check_rank, check_request_len, CommStats, Communicator, CounterOp, CutService,
    EncodedPush, ParameterServer, RecvRequest, ReduceOp, SendRequest, Tag, COUNTERS,
};
use peloton_core::{Error, Result};
use serde::Serialize;

use crate::cluster::{ClusterConfig, FaultKind, Link};
use crate::cost::{self, Nics};
use crate::trace::Trace;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a blocked worker waits for (for deadlock reports).
#[derive(Debug, Clone, PartialEq)]
enum Status {
    Active,
    Blocked(String),
    /// Waiting at a checkpoint cut (out of the turn order, no time passes).
    Parked,
    Done,
}

/// What a checkpoint cut does once every running worker has parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutKind {
    /// Take the engine's state for world rank 0's checkpoint file.
    Save,
    /// Put back the state a worker deposited (a resumed run).
    Restore,
}

struct Message {
    group: u64,
    src: usize,
    tag: Tag,
    data: Vec<f32>,
    arrival: f64,
}

/// One collective in progress on a group.
struct Pending {
    kind: &'static str,
    len: usize,
    entries: Vec<Option<f64>>,
    f32_in: Vec<Vec<f32>>,
    f64_in: Vec<Vec<f64>>,
    arrived: usize,
    /// Set by the last member: the outcome every member copies out.
    result: Option<Outcome>,
    readers_left: usize,
}

#[derive(Clone)]
enum Outcome {
    F32(Arc<Vec<f32>>),
    F64(Arc<Vec<f64>>),
}

struct Group {
    members: Vec<usize>,
    /// The slowest link between ring neighbours: what ring and tree collectives run at.
    link: Link,
}

/// Per-worker totals of virtual time and traffic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerTotals {
    pub worker: usize,
    /// Virtual seconds spent computing local steps.
    pub compute_seconds: f64,
    /// Virtual seconds spent moving data (collective cost, sends waiting for the NIC).
    pub communicate_seconds: f64,
    /// Virtual seconds spent waiting for other workers.
    pub blocked_seconds: f64,
    /// The worker's clock when it finished.
    pub final_clock: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub operations: u64,
}

struct State {
    clock: Vec<f64>,
    status: Vec<Status>,
    mailboxes: Vec<VecDeque<Message>>,
    groups: HashMap<u64, Arc<Group>>,
    pending: HashMap<(u64, u64), Pending>,
    nics: Nics,
    /// Who stopped the run and why (no worker for a deadlock).
    aborted: Option<(Option<usize>, String)>,
    /// What each blocked receiver waits for: (group, source rank in the group, tag).
    waiting: Vec<Option<(u64, usize, Tag)>>,
    totals: Vec<WorkerTotals>,
    /// Bytes between nodes (from, to), point-to-point and collectives.
    link_bytes: BTreeMap<(usize, usize), u64>,
    messages: u64,
    collectives: u64,
    /// Request id → injection time of non-blocking sends not yet waited on.
    sends: HashMap<u64, f64>,
    next_request: u64,
    trace: Trace,
    /// Shared counters (asynchronous coordination), updated in turn order.
    counters: [u64; COUNTERS],
    /// The simulated parameter server. Shard `s` lives on node `s mod nodes` (servers share
    /// the workers' machines, as in the author's EASGD code). Operations take effect at their
    /// issue time, in (virtual time, rank) order; their cost is the round trip to the farthest
    /// shard plus moving every shard's bytes through the worker's links.
    server: ParameterServer,
    /// The checkpoint cut in progress: its kind and, for a restore, the deposited state.
    cut: Option<(CutKind, Option<StateDict>)>,
    /// The engine state taken at the latest save cut, until world rank 0 collects it.
    cut_state: Option<StateDict>,
    /// Workers at the cut that keep answering their peers until the others arrive.
    serving: Vec<bool>,
}

struct Shared {
    n: usize,
    cluster: ClusterConfig,
    seed: u64,
    state: Mutex<State>,
    wake: Vec<Condvar>,
}

impl State {
    fn abort_error(&self) -> Option<Error> {
        self.aborted.as_ref().map(|(worker, reason)| match worker {
            Some(worker) => Error::Aborted {
                worker: *worker,
                reason: reason.clone(),
            },
            None => Error::Transport(reason.clone()),
        })
    }

    /// True when `me` has the smallest (clock, rank) among unblocked, unfinished workers.
    fn is_turn(&self, me: usize) -> bool {
        let mine = self.clock[me];
        self.status.iter().enumerate().all(|(j, s)| {
            j == me
                || *s != Status::Active
                || match self.clock[j].total_cmp(&mine) {
                    std::cmp::Ordering::Greater => true,
                    std::cmp::Ordering::Equal => j > me,
                    std::cmp::Ordering::Less => false,
                }
        })
    }

    /// The worker whose turn it is, if any.
    fn next_turn(&self) -> Option<usize> {
        (0..self.clock.len())
            .filter(|&j| self.status[j] == Status::Active)
            .min_by(|&a, &b| self.clock[a].total_cmp(&self.clock[b]).then(a.cmp(&b)))
    }

    /// When nobody can make progress, the run is over: names what everyone waits for.
    fn deadlock(&self) -> Option<String> {
        if self.status.contains(&Status::Active) {
            return None;
        }
        let waits: Vec<String> = self
            .status
            .iter()
            .enumerate()
            .filter_map(|(w, s)| match s {
                Status::Blocked(what) => Some(format!("worker {w} waits for {what}")),
                Status::Parked => Some(format!("worker {w} waits at a checkpoint cut")),
                _ => None,
            })
            .collect();
        // Only parked (and finished) workers: a cut about to complete, not a deadlock.
        let blocked = self.status.iter().any(|s| matches!(s, Status::Blocked(_)));
        blocked.then(|| format!("deadlock in the simulated run: {}", waits.join("; ")))
    }

    /// The engine's state at a checkpoint cut (every running worker parked).
    fn snapshot(&self) -> Result<StateDict> {
        if !self.pending.is_empty() || !self.sends.is_empty() {
            return Err(Error::Checkpoint(
                "a collective or a non-blocking send is in progress at a checkpoint cut".into(),
            ));
        }
        let mut s = StateDict::new();
        s.put_f64s("clock", &self.clock);
        s.put_u64s("counters", &self.counters);
        s.put_dict("server", self.server.save_state());
        let (outbound, inbound) = self.nics.busy_until();
        s.put_f64s("nic_outbound", outbound);
        s.put_f64s("nic_inbound", inbound);
        let column =
            |f: fn(&WorkerTotals) -> f64| -> Vec<f64> { self.totals.iter().map(f).collect() };
        s.put_f64s("compute_seconds", &column(|t| t.compute_seconds));
        s.put_f64s("communicate_seconds", &column(|t| t.communicate_seconds));
        s.put_f64s("blocked_seconds", &column(|t| t.blocked_seconds));
        let counts: Vec<u64> = self
            .totals
            .iter()
            .flat_map(|t| [t.bytes_sent, t.bytes_received, t.operations])
            .collect();
        s.put_u64s("traffic", &counts);
        let links: Vec<u64> = self
            .link_bytes
            .iter()
            .flat_map(|(&(from, to), &bytes)| [from as u64, to as u64, bytes])
            .collect();
        s.put_u64s("link_bytes", &links);
        s.put_u64s(
            "events",
            &[self.messages, self.collectives, self.next_request],
        );
        let mut mail = StateDict::new();
        for (w, queue) in self.mailboxes.iter().enumerate() {
            for (i, m) in queue.iter().enumerate() {
                let mut d = StateDict::new();
                d.put_u64s("header", &[m.group, m.src as u64, u64::from(m.tag)]);
                d.put_f64("arrival", m.arrival);
                d.put_f32s("data", &m.data);
                mail.put_dict(&format!("{w:06}.{i:09}"), d);
            }
        }
        s.put_dict("mailboxes", mail);
        Ok(s)
    }

    /// Puts back what [`State::snapshot`] took (the world must have the same shape).
    fn restore(&mut self, s: &StateDict) -> Result<()> {
        let n = self.clock.len();
        let bad = |what: &str| Error::Checkpoint(format!("simulator state: {what}"));
        let clock = s.f64s("clock")?;
        if clock.len() != n {
            return Err(bad(&format!(
                "clock: {} worker clocks, this run has {n} workers",
                clock.len()
            )));
        }
        self.clock.copy_from_slice(clock);
        let counters = s.u64s("counters")?;
        if counters.len() != COUNTERS {
            return Err(bad("counters: wrong number of shared counters"));
        }
        self.counters.copy_from_slice(counters);
        self.server.load_state(s.dict("server")?)?;
        if !self
            .nics
            .set_busy_until(s.f64s("nic_outbound")?, s.f64s("nic_inbound")?)
        {
            return Err(bad("nic_outbound, nic_inbound: the node count differs"));
        }
        let (compute, communicate, blocked) = (
            s.f64s("compute_seconds")?,
            s.f64s("communicate_seconds")?,
            s.f64s("blocked_seconds")?,
        );
        let traffic = s.u64s("traffic")?;
        if [compute.len(), communicate.len(), blocked.len()] != [n; 3] || traffic.len() != 3 * n {
            return Err(bad(
                "compute_seconds, communicate_seconds, blocked_seconds, traffic: per-worker totals of the wrong length",
            ));
        }
        for (w, t) in self.totals.iter_mut().enumerate() {
            t.compute_seconds = compute[w];
            t.communicate_seconds = communicate[w];
            t.blocked_seconds = blocked[w];
            t.bytes_sent = traffic[3 * w];
            t.bytes_received = traffic[3 * w + 1];
            t.operations = traffic[3 * w + 2];
        }
        let links = s.u64s("link_bytes")?;
        if !links.len().is_multiple_of(3) {
            return Err(bad("link_bytes: not (from, to, bytes) triples"));
        }
        self.link_bytes = links
            .chunks_exact(3)
            .map(|c| ((c[0] as usize, c[1] as usize), c[2]))
            .collect();
        let &[messages, collectives, next_request] = s.u64s("events")? else {
            return Err(bad(
                "events: must be three numbers (messages, collectives, requests)",
            ));
        };
        (self.messages, self.collectives, self.next_request) =
            (messages, collectives, next_request);
        self.mailboxes.iter_mut().for_each(VecDeque::clear);
        let mail = s.dict("mailboxes")?;
        // Keys are zero-padded, so their order is each mailbox's order.
        for key in mail.keys() {
            let d = mail.dict(key)?;
            let w = key
                .split_once('.')
                .and_then(|(w, _)| w.parse::<usize>().ok())
                .filter(|&w| w < n)
                .ok_or_else(|| bad(&format!("bad mailbox entry {key:?}")))?;
            let &[group, src, tag] = d.u64s("header")? else {
                return Err(bad("a message header must be three numbers"));
            };
            self.mailboxes[w].push_back(Message {
                group,
                src: src as usize,
                tag: Tag::try_from(tag).map_err(|_| bad("a message tag is out of range"))?,
                data: d.f32s("data")?.to_vec(),
                arrival: d.f64("arrival")?,
            });
        }
        Ok(())
    }
}

impl Shared {
    /// Wakes whoever may act now: the worker whose turn it is and every worker that was
    /// woken from a wait. Checks for deadlock.
    fn after_change(&self, st: &mut State, woken: &[usize]) {
        if st.aborted.is_none() {
            if let Some(reason) = st.deadlock() {
                st.aborted = Some((None, reason));
                self.wake.iter().for_each(Condvar::notify_all);
                return;
            }
        }
        for &w in woken {
            self.wake[w].notify_all();
        }
        if let Some(next) = st.next_turn() {
            self.wake[next].notify_all();
        }
    }

    fn abort(&self, worker: usize, reason: &str) {
        let mut st = lock(&self.state);
        if st.aborted.is_none() {
            st.aborted = Some((Some(worker), reason.to_string()));
        }
        self.wake.iter().for_each(Condvar::notify_all);
    }

    /// Waits until it is `me`'s turn (see the module documentation).
    fn wait_turn<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        me: usize,
    ) -> Result<MutexGuard<'a, State>> {
        loop {
            if let Some(e) = st.abort_error() {
                return Err(e);
            }
            if st.is_turn(me) {
                return Ok(st);
            }
            st = self.wake[me].wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Parks `me` at a checkpoint cut of `kind` (depositing `state` for a restore) and waits
    /// until the cut is complete. Call in turn order for a save cut.
    fn park<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        me: usize,
        kind: CutKind,
        state: Option<StateDict>,
    ) -> Result<MutexGuard<'a, State>> {
        match &mut st.cut {
            Some((k, _)) if *k != kind => {
                let message = format!(
                    "worker {me} arrived at a checkpoint cut of another kind ({kind:?} / {k:?})"
                );
                drop(st);
                self.abort(me, &message);
                return Err(Error::Transport(message));
            }
            Some((_, deposit)) => {
                if state.is_some() {
                    *deposit = state;
                }
            }
            None => st.cut = Some((kind, state)),
        }
        st.status[me] = Status::Parked;
        self.complete_cut(&mut st, me)?;
        loop {
            if let Some(e) = st.abort_error() {
                return Err(e);
            }
            if st.status[me] != Status::Parked {
                return Ok(st);
            }
            st = self.wake[me].wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// When every running worker has parked: takes or restores the engine state and lets
    /// everyone go on. Otherwise passes the turn on (parking left the turn order).
    fn complete_cut(&self, st: &mut State, me: usize) -> Result<()> {
        let everyone = st
            .status
            .iter()
            .all(|s| matches!(s, Status::Parked | Status::Done));
        if !everyone || st.cut.is_none() {
            self.after_change(st, &[]);
            return Ok(());
        }
        let (kind, deposit) = st.cut.take().expect("checked above");
        let outcome = match kind {
            CutKind::Save => st.snapshot().map(|s| st.cut_state = Some(s)),
            CutKind::Restore => deposit.map_or(Ok(()), |d| st.restore(&d)),
        };
        if let Err(e) = outcome {
            st.aborted = Some((Some(me), e.to_string()));
            self.wake.iter().for_each(Condvar::notify_all);
            return Err(e);
        }
        for s in st.status.iter_mut() {
            if *s == Status::Parked {
                *s = Status::Active;
            }
        }
        self.wake.iter().for_each(Condvar::notify_all);
        Ok(())
    }

    /// Marks `me` blocked on `what` and waits until another worker wakes it.
    fn block<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        me: usize,
        what: String,
    ) -> Result<MutexGuard<'a, State>> {
        st.status[me] = Status::Blocked(what);
        self.after_change(&mut st, &[]);
        loop {
            if let Some(e) = st.abort_error() {
                return Err(e);
            }
            if st.status[me] == Status::Active {
                return Ok(st);
            }
            st = self.wake[me].wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A simulated world of `n` workers: create it, then hand one [`SimComm`] to each worker.
pub struct SimWorld {
    shared: Arc<Shared>,
    started: Instant,
}

/// What a simulated run cost, besides its metrics.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// The latest worker's clock at the end.
    pub simulated_seconds: f64,
    /// Host seconds the simulation took.
    pub wall_seconds: f64,
    /// Point-to-point messages and collectives simulated.
    pub messages: u64,
    pub collectives: u64,
    /// (messages + collectives) per host second.
    pub events_per_second: f64,
    pub workers: Vec<WorkerTotals>,
    /// Bytes that crossed each pair of nodes (from → to); intra-node traffic under the same
    /// node on both sides.
    pub links: Vec<LinkBytes>,
    pub trace_events: usize,
    pub trace_dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkBytes {
    pub from_node: usize,
    pub to_node: usize,
    pub bytes: u64,
}

impl SimWorld {
    /// A world for `n` workers on `cluster`; `seed` drives the compute model's randomness.
    pub fn new(n: usize, cluster: &ClusterConfig, seed: u64) -> Result<Self> {
        peloton_core::ensure_config!(n >= 1, "workers must be at least 1");
        cluster.validate(n)?;
        let mut groups = HashMap::new();
        groups.insert(0, Arc::new(group(cluster, (0..n).collect())));
        let state = State {
            clock: vec![0.0; n],
            status: vec![Status::Active; n],
            mailboxes: (0..n).map(|_| VecDeque::new()).collect(),
            groups,
            pending: HashMap::new(),
            waiting: vec![None; n],
            nics: Nics::new(cluster.node_count(n)),
            aborted: None,
            totals: (0..n)
                .map(|worker| WorkerTotals {
                    worker,
                    ..Default::default()
                })
                .collect(),
            link_bytes: BTreeMap::new(),
            messages: 0,
            collectives: 0,
            sends: HashMap::new(),
            next_request: 0,
            trace: Trace::new(cluster.trace_events, n),
            counters: [0; COUNTERS],
            server: ParameterServer::default(),
            cut: None,
            cut_state: None,
            serving: vec![false; n],
        };
        Ok(Self {
            shared: Arc::new(Shared {
                n,
                cluster: cluster.clone(),
                seed,
                state: Mutex::new(state),
                wake: (0..n).map(|_| Condvar::new()).collect(),
            }),
            started: Instant::now(),
        })
    }

    /// The world communicators, one per worker, in rank order.
    pub fn communicators(&self) -> Vec<SimComm> {
        let members = Arc::new((0..self.shared.n).collect::<Vec<_>>());
        (0..self.shared.n)
            .map(|rank| SimComm {
                shared: self.shared.clone(),
                group: 0,
                members: members.clone(),
                rank,
                world_rank: rank,
                sequence: 0,
                diagnostic: false,
                is_world: true,
            })
            .collect()
    }

    /// The cost report (call after every worker finished).
    pub fn report(&self) -> SimReport {
        let st = lock(&self.shared.state);
        let wall = self.started.elapsed().as_secs_f64();
        let mut workers = st.totals.clone();
        for w in &mut workers {
            w.final_clock = st.clock[w.worker];
        }
        SimReport {
            simulated_seconds: st.clock.iter().copied().fold(0.0, f64::max),
            wall_seconds: wall,
            messages: st.messages,
            collectives: st.collectives,
            events_per_second: (st.messages + st.collectives) as f64 / wall.max(1e-9),
            workers,
            links: st
                .link_bytes
                .iter()
                .map(|(&(from_node, to_node), &bytes)| LinkBytes {
                    from_node,
                    to_node,
                    bytes,
                })
                .collect(),
            trace_events: st.trace.len(),
            trace_dropped: st.trace.dropped(),
        }
    }

    /// The Chrome / Perfetto trace of the run (JSON).
    pub fn trace_json(&self) -> String {
        let st = lock(&self.shared.state);
        st.trace
            .to_json(self.shared.n, |w| self.shared.cluster.node_of(w))
    }
}

fn group(cluster: &ClusterConfig, members: Vec<usize>) -> Group {
    let p = members.len();
    let mut link = cluster.intra;
    for i in 0..p {
        let l = cluster.link(members[i], members[(i + 1) % p]);
        link = Link {
            latency_us: link.latency_us.max(l.latency_us),
            bandwidth_gbps: link.bandwidth_gbps.min(l.bandwidth_gbps),
        };
    }
    Group { members, link }
}

/// One worker's handle on a simulated group.
pub struct SimComm {
    shared: Arc<Shared>,
    group: u64,
    members: Arc<Vec<usize>>,
    rank: usize,
    world_rank: usize,
    /// Collectives this member has entered on this group (all members count alike).
    sequence: u64,
    diagnostic: bool,
    is_world: bool,
}

impl Drop for SimComm {
    fn drop(&mut self) {
        if self.is_world {
            let mut st = lock(&self.shared.state);
            let me = self.world_rank;
            st.status[me] = Status::Done;
            // Receivers blocked on this worker learn that nothing more will come.
            let mut woken = Vec::new();
            for w in 0..st.waiting.len() {
                if let Some((group, src, _)) = st.waiting[w] {
                    if st.groups.get(&group).map(|g| g.members[src]) == Some(me) {
                        st.waiting[w] = None;
                        st.status[w] = Status::Active;
                        woken.push(w);
                    }
                }
            }
            // The others may all be waiting at a checkpoint cut for this worker.
            if st.cut.is_some() && self.shared.complete_cut(&mut st, me).is_err() {
                return;
            }
            self.shared.after_change(&mut st, &woken);
        }
    }
}

/// The data a member brings to a collective.
enum Contribution<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl SimComm {
    fn me(&self) -> usize {
        self.world_rank
    }

    fn state(&self) -> Result<MutexGuard<'_, State>> {
        let st = lock(&self.shared.state);
        match st.abort_error() {
            Some(e) => Err(e),
            None => Ok(st),
        }
    }

    fn check_rank(&self, what: &str, r: usize) -> Result<()> {
        check_rank(what, r, self.members.len())
    }

    /// Enters collective `kind`, waits for every member, and returns the outcome.
    fn collective(
        &mut self,
        kind: &'static str,
        data: Contribution<'_>,
        finish: impl FnOnce(&mut Pending, &Group) -> (Outcome, f64),
    ) -> Result<Outcome> {
        let key = (self.group, self.sequence);
        self.sequence += 1;
        let me = self.me();
        let p = self.members.len();
        let len = match &data {
            Contribution::F32(d) => d.len(),
            Contribution::F64(d) => d.len(),
        };
        let mut st = self.state()?;
        let entry = st.clock[me];
        let slot = st.pending.entry(key).or_insert_with(|| Pending {
            kind,
            len,
            entries: vec![None; p],
            f32_in: vec![Vec::new(); p],
            f64_in: vec![Vec::new(); p],
            arrived: 0,
            result: None,
            readers_left: p,
        });
        if slot.kind != kind || slot.len != len {
            let message = format!(
                "collective mismatch: worker {me} called {kind} with {len} values while another member called {} with {}",
                slot.kind, slot.len
            );
            drop(st);
            self.shared.abort(me, &message);
            return Err(Error::Transport(message));
        }
        slot.entries[self.rank] = Some(entry);
        match data {
            Contribution::F32(d) => slot.f32_in[self.rank] = d.to_vec(),
            Contribution::F64(d) => slot.f64_in[self.rank] = d.to_vec(),
        }
        slot.arrived += 1;
        if slot.arrived == p {
            let group = st.groups[&self.group].clone();
            let slot = st.pending.get_mut(&key).expect("just inserted");
            let (outcome, cost) = finish(slot, &group);
            let start = slot
                .entries
                .iter()
                .map(|e| e.unwrap_or(0.0))
                .fold(f64::NEG_INFINITY, f64::max);
            let entries: Vec<f64> = slot.entries.iter().map(|e| e.unwrap_or(start)).collect();
            slot.result = Some(outcome);
            let cost = if self.diagnostic { 0.0 } else { cost };
            let end = start + cost;
            st.collectives += 1;
            for (r, &w) in group.members.iter().enumerate() {
                st.clock[w] = end;
                if !self.diagnostic {
                    st.totals[w].blocked_seconds += start - entries[r];
                    st.totals[w].communicate_seconds += cost;
                    if cost > 0.0 {
                        st.trace.span(w, kind, entries[r], end - entries[r]);
                    }
                }
                st.status[w] = Status::Active;
            }
            let others: Vec<usize> = group.members.iter().copied().filter(|&w| w != me).collect();
            self.shared.after_change(&mut st, &others);
        } else {
            let what = format!("{kind} on a group of {p} (collective #{})", key.1);
            st = self.shared.block(st, me, what)?;
        }
        let slot = st.pending.get_mut(&key).expect("collective in progress");
        let outcome = slot.result.clone().expect("collective completed");
        slot.readers_left -= 1;
        if slot.readers_left == 0 {
            st.pending.remove(&key);
        }
        Ok(outcome)
    }

    fn count(&self, sent: u64, received: u64) {
        let mut st = lock(&self.shared.state);
        let t = &mut st.totals[self.world_rank];
        t.bytes_sent += sent;
        t.bytes_received += received;
        t.operations += 1;
    }

    /// Records ring traffic between consecutive members (bytes each way per member).
    fn ring_traffic(&self, bytes: u64) {
        let p = self.members.len();
        if p < 2 || self.diagnostic {
            return;
        }
        let cluster = &self.shared.cluster;
        let from = cluster.node_of(self.world_rank);
        let to = cluster.node_of(self.members[(self.rank + 1) % p]);
        *lock(&self.shared.state)
            .link_bytes
            .entry((from, to))
            .or_default() += bytes;
    }

    fn reduce_f32(inputs: &[Vec<f32>], op: ReduceOp) -> Vec<f32> {
        // Rank order, like the threads transport, so both give the same bits.
        let mut acc = inputs[0].clone();
        for x in &inputs[1..] {
            match op {
                ReduceOp::Sum | ReduceOp::Mean => acc.iter_mut().zip(x).for_each(|(a, b)| *a += *b),
                ReduceOp::Max => acc.iter_mut().zip(x).for_each(|(a, b)| *a = a.max(*b)),
                ReduceOp::Min => acc.iter_mut().zip(x).for_each(|(a, b)| *a = a.min(*b)),
            }
        }
        if op == ReduceOp::Mean {
            let p = inputs.len() as f32;
            acc.iter_mut().for_each(|a| *a /= p);
        }
        acc
    }

    fn send_message(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<f64> {
        self.check_rank("send destination", dest)?;
        let me = self.me();
        let to = self.members[dest];
        let cluster = &self.shared.cluster;
        let nodes = (cluster.node_of(me), cluster.node_of(to));
        let queues = cluster.contention && nodes.0 != nodes.1;
        let st = self.state()?;
        // Who queues first on a shared NIC depends on the other workers: act in turn.
        let mut st = if queues {
            self.shared.wait_turn(st, me)?
        } else {
            st
        };
        let bytes = 4 * data.len();
        let now = st.clock[me];
        let transfer =
            st.nics
                .transfer(now, bytes, cluster.link(me, to), nodes, cluster.contention);
        st.mailboxes[to].push_back(Message {
            group: self.group,
            src: self.rank,
            tag,
            data: data.to_vec(),
            arrival: transfer.arrival,
        });
        st.messages += 1;
        *st.link_bytes.entry(nodes).or_default() += bytes as u64;
        let t = &mut st.totals[me];
        t.bytes_sent += bytes as u64;
        t.operations += 1;
        st.trace.instant(me, "send", now, to, bytes);
        let mut woken = Vec::new();
        if st.waiting[to] == Some((self.group, self.rank, tag)) {
            st.waiting[to] = None;
            st.clock[to] = st.clock[to].max(transfer.arrival);
            st.status[to] = Status::Active;
            woken.push(to);
        }
        self.shared.after_change(&mut st, &woken);
        Ok(transfer.injected)
    }

    /// Waits for the injection of a send to finish (the sender's NIC is busy until then).
    fn finish_send(&self, injected: f64) -> Result<()> {
        let mut st = self.state()?;
        let me = self.me();
        if injected > st.clock[me] {
            st.totals[me].communicate_seconds += injected - st.clock[me];
            st.clock[me] = injected;
            self.shared.after_change(&mut st, &[]);
        }
        Ok(())
    }

    fn take_message(&mut self, src: usize, tag: Tag, buf: &mut [f32]) -> Result<()> {
        self.check_rank("receive source", src)?;
        let me = self.me();
        let mut st = self.state()?;
        let waited_from = st.clock[me];
        loop {
            let found = st.mailboxes[me]
                .iter()
                .position(|m| m.group == self.group && m.src == src && m.tag == tag);
            if let Some(i) = found {
                let msg = st.mailboxes[me].remove(i).expect("found above");
                if msg.data.len() != buf.len() {
                    return Err(Error::Transport(format!(
                        "message from worker {} (tag {tag}) has {} values, the receiver expected {}",
                        self.members[src],
                        msg.data.len(),
                        buf.len()
                    )));
                }
                buf.copy_from_slice(&msg.data);
                let done = st.clock[me].max(msg.arrival);
                if done > waited_from {
                    st.totals[me].blocked_seconds += done - waited_from;
                    st.trace.span(me, "wait", waited_from, done - waited_from);
                }
                st.clock[me] = done;
                let t = &mut st.totals[me];
                t.bytes_received += 4 * buf.len() as u64;
                t.operations += 1;
                self.shared.after_change(&mut st, &[]);
                return Ok(());
            }
            if st.status[self.members[src]] == Status::Done {
                // A finished worker sends nothing more (exact in virtual time too).
                return Err(Error::Left {
                    worker: self.members[src],
                });
            }
            let what = format!("a message from worker {} (tag {tag})", self.members[src]);
            st.waiting[me] = Some((self.group, src, tag));
            st = self.shared.block(st, me, what)?;
        }
    }
}

impl Communicator for SimComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.members.len()
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let p = self.size();
        if p == 1 {
            return Ok(());
        }
        let n = buf.len();
        let algorithm = self.shared.cluster.collectives;
        let outcome = self.collective("all-reduce", Contribution::F32(buf), |slot, g| {
            let result = SimComm::reduce_f32(&slot.f32_in, op);
            (
                Outcome::F32(Arc::new(result)),
                cost::all_reduce(algorithm, p, 4 * n, g.link),
            )
        })?;
        if let Outcome::F32(r) = outcome {
            buf.copy_from_slice(&r);
        }
        let bytes = (2 * (p - 1) * 4 * n / p) as u64;
        self.count(bytes, bytes);
        self.ring_traffic(bytes);
        Ok(())
    }

    fn reduce(&mut self, buf: &mut [f32], root: usize, op: ReduceOp) -> Result<()> {
        self.check_rank("reduce root", root)?;
        let p = self.size();
        if p == 1 {
            return Ok(());
        }
        let n = buf.len();
        let outcome = self.collective("reduce", Contribution::F32(buf), |slot, g| {
            let result = SimComm::reduce_f32(&slot.f32_in, op);
            (Outcome::F32(Arc::new(result)), cost::tree(p, 4 * n, g.link))
        })?;
        let bytes = 4 * n as u64;
        if self.rank == root {
            if let Outcome::F32(r) = outcome {
                buf.copy_from_slice(&r);
            }
            self.count(0, bytes);
        } else {
            self.count(bytes, 0);
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        self.check_rank("broadcast root", root)?;
        let p = self.size();
        if p == 1 {
            return Ok(());
        }
        let n = buf.len();
        let outcome = self.collective("broadcast", Contribution::F32(buf), |slot, g| {
            let result = slot.f32_in[root].clone();
            (Outcome::F32(Arc::new(result)), cost::tree(p, 4 * n, g.link))
        })?;
        if let Outcome::F32(r) = outcome {
            buf.copy_from_slice(&r);
        }
        let bytes = 4 * n as u64;
        if self.rank == root {
            self.count(bytes, 0);
        } else {
            self.count(0, bytes);
        }
        Ok(())
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        let p = self.size();
        let k = send.len();
        if recv.len() != p * k {
            return Err(Error::Transport(format!(
                "all-gather: receive buffer holds {} values, expected {p}·{k}",
                recv.len()
            )));
        }
        let outcome = self.collective("all-gather", Contribution::F32(send), |slot, g| {
            let result: Vec<f32> = slot.f32_in.concat();
            (
                Outcome::F32(Arc::new(result)),
                cost::ring_all_gather(p, 4 * k, g.link),
            )
        })?;
        if let Outcome::F32(r) = outcome {
            recv.copy_from_slice(&r);
        }
        let bytes = ((p - 1) * 4 * k) as u64;
        self.count(bytes, bytes);
        self.ring_traffic(bytes);
        Ok(())
    }

    fn all_gather_f64(&mut self, send: &[f64], recv: &mut [f64]) -> Result<()> {
        let p = self.size();
        let k = send.len();
        if recv.len() != p * k {
            return Err(Error::Transport(format!(
                "all-gather: receive buffer holds {} values, expected {p}·{k}",
                recv.len()
            )));
        }
        let outcome = self.collective("all-gather-f64", Contribution::F64(send), |slot, g| {
            let result: Vec<f64> = slot.f64_in.concat();
            (
                Outcome::F64(Arc::new(result)),
                cost::ring_all_gather(p, 8 * k, g.link),
            )
        })?;
        if let Outcome::F64(r) = outcome {
            recv.copy_from_slice(&r);
        }
        let bytes = ((p - 1) * 8 * k) as u64;
        self.count(bytes, bytes);
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        let p = self.size();
        self.collective("barrier", Contribution::F32(&[]), |_, g| {
            (Outcome::F32(Arc::new(Vec::new())), cost::barrier(p, g.link))
        })?;
        self.count(0, 0);
        Ok(())
    }

    fn send(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<()> {
        let injected = self.send_message(dest, tag, data)?;
        self.finish_send(injected)
    }

    fn recv(&mut self, src: usize, tag: Tag, buf: &mut [f32]) -> Result<()> {
        self.take_message(src, tag, buf)
    }

    fn isend(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<SendRequest> {
        let injected = self.send_message(dest, tag, data)?;
        let mut st = self.state()?;
        st.next_request += 1;
        let id = st.next_request;
        st.sends.insert(id, injected);
        Ok(SendRequest { id })
    }

    fn irecv(&mut self, src: usize, tag: Tag, len: usize) -> Result<RecvRequest> {
        self.check_rank("receive source", src)?;
        let mut st = self.state()?;
        st.next_request += 1;
        Ok(RecvRequest {
            id: st.next_request,
            src,
            tag,
            len,
        })
    }

    fn wait_send(&mut self, req: SendRequest) -> Result<()> {
        let injected = self.state()?.sends.remove(&req.id);
        match injected {
            Some(t) => self.finish_send(t),
            None => Err(Error::Transport(format!(
                "wait_send: request {} is not a pending send",
                req.id
            ))),
        }
    }

    fn wait_recv(&mut self, req: RecvRequest, buf: &mut [f32]) -> Result<()> {
        check_request_len(&req, buf)?;
        self.take_message(req.src, req.tag, buf)
    }

    fn test_recv(&mut self, req: &RecvRequest) -> Result<bool> {
        // Whether a message has arrived by now depends on every sender that could still send
        // one before now: ask in turn, when no other worker's clock is earlier.
        let me = self.me();
        let st = self.state()?;
        let st = self.shared.wait_turn(st, me)?;
        let now = st.clock[me];
        Ok(st.mailboxes[me]
            .iter()
            .find(|m| m.group == self.group && m.src == req.src && m.tag == req.tag)
            .is_some_and(|m| m.arrival <= now))
    }

    fn split(&mut self, color: usize, key: usize) -> Result<Box<dyn Communicator>> {
        let p = self.size();
        let mine = [color as f64, key as f64];
        let outcome = self.collective("split", Contribution::F64(&mine), |slot, g| {
            (
                Outcome::F64(Arc::new(slot.f64_in.concat())),
                cost::ring_all_gather(p, 16, g.link),
            )
        })?;
        let Outcome::F64(all) = outcome else {
            return Err(Error::Transport("split failed".into()));
        };
        // Counted like the all-gather of (color, key) it is.
        let bytes = ((p - 1) * 16) as u64;
        self.count(bytes, bytes);
        let mut same: Vec<(usize, usize)> = (0..p)
            .filter(|&r| all[2 * r] == color as f64)
            .map(|r| (all[2 * r + 1] as usize, r))
            .collect();
        same.sort_unstable();
        let members: Vec<usize> = same.iter().map(|&(_, r)| self.members[r]).collect();
        let rank = same
            .iter()
            .position(|&(_, r)| r == self.rank)
            .expect("caller is in its own color");
        // Every member of the new group derives the same id from (parent, sequence, color).
        let id = {
            let mut st = self.state()?;
            let id = self.group.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ (self.sequence << 20)
                ^ (color as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)
                ^ 1;
            let cluster = self.shared.cluster.clone();
            st.groups
                .entry(id)
                .or_insert_with(|| Arc::new(group(&cluster, members.clone())));
            id
        };
        Ok(Box::new(SimComm {
            shared: self.shared.clone(),
            group: id,
            members: Arc::new(members),
            rank,
            world_rank: self.world_rank,
            sequence: 0,
            diagnostic: false,
            is_world: false,
        }))
    }

    fn abort(&self, reason: &str) {
        self.shared.abort(self.world_rank, reason);
    }

    fn stats(&self) -> CommStats {
        let st = lock(&self.shared.state);
        let t = &st.totals[self.world_rank];
        CommStats {
            bytes_sent: t.bytes_sent,
            bytes_received: t.bytes_received,
            operations: t.operations,
        }
    }

    fn now(&self) -> Option<f64> {
        Some(lock(&self.shared.state).clock[self.world_rank])
    }

    fn stopped_by_fault(&self) -> Option<f64> {
        let me = self.me();
        let now = lock(&self.shared.state).clock[me];
        self.shared
            .cluster
            .faults
            .iter()
            .any(|f| f.worker == me && f.kind == FaultKind::Stop && now >= f.at)
            .then_some(now)
    }

    fn compute(&mut self, step: u64) -> Result<()> {
        let me = self.me();
        let cluster = &self.shared.cluster;
        let mut seconds = cluster.compute.step_seconds(self.shared.seed, me, step);
        let mut st = self.state()?;
        let now = st.clock[me];
        for fault in cluster
            .faults
            .iter()
            .filter(|f| f.worker == me && now >= f.at)
        {
            match fault.kind {
                FaultKind::Slow => seconds *= fault.factor,
                FaultKind::Stop => {
                    return Err(Error::Stopped {
                        worker: me,
                        at: now,
                    })
                }
            }
        }
        st.clock[me] = now + seconds;
        st.totals[me].compute_seconds += seconds;
        st.trace.span(me, "compute", now, seconds);
        self.shared.after_change(&mut st, &[]);
        Ok(())
    }

    fn set_diagnostic(&mut self, on: bool) {
        self.diagnostic = on;
    }

    fn counter(&mut self, id: usize, op: CounterOp) -> Result<u64> {
        check_counter(id)?;
        let me = self.me();
        // The value depends on every operation issued before now: act in turn.
        let st = self.state()?;
        let mut st = self.shared.wait_turn(st, me)?;
        let old = st.counters[id];
        st.counters[id] = op.apply(old);
        // A round trip of 8 bytes to the coordinator, which lives with worker 0.
        let link = self.shared.cluster.link(me, 0);
        let cost = if self.diagnostic {
            0.0
        } else {
            2.0 * (link.alpha() + 8.0 * link.beta())
        };
        self.advance(&mut st, "counter", cost, 8, 8);
        Ok(old)
    }

    fn server_init(&mut self, init: &[f32], shards: usize) -> Result<()> {
        let me = self.me();
        let st = self.state()?;
        let mut st = self.shared.wait_turn(st, me)?;
        st.server.init(init, shards, me)?;
        self.shared.after_change(&mut st, &[]);
        Ok(())
    }

    fn server_pull(&mut self, buf: &mut [f32]) -> Result<u64> {
        let me = self.me();
        let st = self.state()?;
        let mut st = self.shared.wait_turn(st, me)?;
        let version = st.server.pull(buf, me)?;
        let wire_bytes = 4 * buf.len() as u64;
        let cost = self.server_cost(st.server.ranges(), wire_bytes, true);
        self.advance(&mut st, "pull", cost, 0, wire_bytes);
        Ok(version)
    }

    fn server_push(&mut self, delta: &[f32]) -> Result<()> {
        self.push_charged(delta, 4 * delta.len() as u64)
    }

    /// Decoded here (the simulated server is in this process); the links carry and charge the
    /// encoded bytes.
    fn server_push_encoded(&mut self, push: &EncodedPush<'_>) -> Result<()> {
        self.push_charged(&push.decoded()?, push.wire_bytes())
    }

    fn probe_any(&mut self, tag: Tag) -> Result<Option<(usize, usize)>> {
        // Like test_recv: what has arrived by now depends on every earlier sender.
        let me = self.me();
        let st = self.state()?;
        let st = self.shared.wait_turn(st, me)?;
        let now = st.clock[me];
        Ok(st.mailboxes[me]
            .iter()
            .filter(|m| m.group == self.group && m.tag == tag && m.arrival <= now)
            .min_by(|a, b| a.arrival.total_cmp(&b.arrival).then(a.src.cmp(&b.src)))
            .map(|m| (m.src, m.data.len())))
    }

    fn checkpoint_cut(
        &mut self,
        mut serve: Option<&mut CutService<'_>>,
    ) -> Result<Option<StateDict>> {
        if !self.is_world {
            return Err(Error::Transport(
                "a checkpoint cut is taken on the world communicator".into(),
            ));
        }
        let me = self.me();
        loop {
            // In turn: whether a serving worker sees the others parked, and so the whole cut,
            // follows virtual time, not the host's thread timing.
            let st = self.state()?;
            let mut st = self.shared.wait_turn(st, me)?;
            st.serving[me] = serve.is_some();
            // Serving workers wait for the others, not for each other (two passive AD-PSGD
            // workers never send to one another).
            let others_parked = st.status.iter().enumerate().all(|(j, s)| {
                j == me || matches!(s, Status::Parked | Status::Done) || st.serving[j]
            });
            match serve.as_mut() {
                Some(serve) if !others_parked => {
                    drop(st);
                    serve(self)?;
                    self.pause()?;
                }
                _ => {
                    st.serving[me] = false;
                    let mut st = self.shared.park(st, me, CutKind::Save, None)?;
                    return Ok(if me == 0 { st.cut_state.take() } else { None });
                }
            }
        }
    }

    fn restore_cut(&mut self, state: &StateDict) -> Result<()> {
        if !self.is_world {
            return Err(Error::Transport(
                "a checkpoint cut is restored on the world communicator".into(),
            ));
        }
        let me = self.me();
        let st = self.state()?;
        let deposit = (!state.is_empty()).then(|| state.clone());
        drop(self.shared.park(st, me, CutKind::Restore, deposit)?);
        Ok(())
    }

    fn pause(&mut self) -> Result<()> {
        let me = self.me();
        let mut st = self.state()?;
        let dt = self.shared.cluster.poll_interval_us * 1e-6;
        st.clock[me] += dt;
        st.totals[me].blocked_seconds += dt;
        self.shared.after_change(&mut st, &[]);
        Ok(())
    }
}

impl SimComm {
    /// Adds `delta` to the server, in turn, charging `wire_bytes` sent.
    fn push_charged(&mut self, delta: &[f32], wire_bytes: u64) -> Result<()> {
        let me = self.me();
        let st = self.state()?;
        let mut st = self.shared.wait_turn(st, me)?;
        st.server.push(delta, me)?;
        let cost = self.server_cost(st.server.ranges(), wire_bytes, false);
        self.advance(&mut st, "push", cost, wire_bytes, 0);
        Ok(())
    }

    /// Virtual seconds of one exchange with the parameter server's shards (hosted round robin
    /// on the nodes): every shard's share of `wire_bytes` crosses the link to its server's node
    /// (one after the other through the worker's NIC), plus the latency of the farthest shard,
    /// twice for a pull (request, then reply).
    fn server_cost(
        &self,
        ranges: &[std::ops::Range<usize>],
        wire_bytes: u64,
        round_trip: bool,
    ) -> f64 {
        if self.diagnostic {
            return 0.0;
        }
        let cluster = &self.shared.cluster;
        let n = self.shared.n;
        let nodes = cluster.node_count(n);
        let me = self.me();
        let values: usize = ranges.iter().map(|r| r.len()).sum();
        // A compressed message is spread over the shards as its values are.
        let bytes_per_value = wire_bytes as f64 / values.max(1) as f64;
        let mut latency: f64 = 0.0;
        let mut transfer = 0.0;
        for (s, r) in ranges.iter().enumerate() {
            let host = (s % nodes) * cluster.workers_per_node;
            let link = cluster.link(me, host.min(n - 1));
            latency = latency.max(link.alpha());
            transfer += bytes_per_value * r.len() as f64 * link.beta();
        }
        transfer + if round_trip { 2.0 } else { 1.0 } * latency
    }

    /// Charges `cost` virtual seconds of communication and the traffic of one operation.
    fn advance(
        &self,
        st: &mut MutexGuard<'_, State>,
        what: &'static str,
        cost: f64,
        sent: u64,
        received: u64,
    ) {
        let me = self.me();
        let now = st.clock[me];
        st.clock[me] = now + cost;
        let t = &mut st.totals[me];
        t.communicate_seconds += cost;
        t.bytes_sent += sent;
        t.bytes_received += received;
        t.operations += 1;
        if cost > 0.0 {
            st.trace.span(me, what, now, cost);
        }
        self.shared.after_change(st, &[]);
    }
}

/// Runs `f(comm)` on `n` simulated workers (one thread each) and returns their results in
/// rank order with the world, for its report and trace. A panic becomes that worker's error.
pub fn run_workers<T, F>(
    n: usize,
    cluster: &ClusterConfig,
    seed: u64,
    f: F,
) -> Result<(Vec<Result<T>>, SimWorld)>
where
    T: Send,
    F: Fn(&mut SimComm) -> Result<T> + Sync,
{
    let world = SimWorld::new(n, cluster, seed)?;
    let results = peloton_core::transport::spawn_workers(world.communicators(), f);
    Ok((results, world))
}
