//! The threads transport: N workers as threads of one process, talking through shared memory.
//!
//! Collectives work in place on the workers' own buffers: every member publishes a pointer
//! to its buffer, an *entry barrier* makes all pointers visible, each member then works on a
//! disjoint slice of every buffer (for all-reduce, member r reduces and writes back chunk r of
//! all buffers), and an *exit barrier* hands the buffers back to their owners. Each member
//! therefore moves about 2·n bytes per all-reduce, like one `memcpy` of the buffer, whatever
//! the group size. Point-to-point messages go through one mailbox per worker.
//!
//! Waiting never spins: barriers and mailboxes block on condition variables and wake every
//! few milliseconds to notice an abort or a worker that left, so an error on one worker ends
//! the run on all of them instead of hanging it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::{
    check_counter, check_rank, check_request_len, shard_ranges, CommStats, Communicator, CounterOp,
    EncodedPush, Fault, FaultKind, RecvRequest, ReduceOp, SendRequest, Tag, COUNTERS,
};
use crate::{Error, Result};

/// How often a blocked worker wakes to check for an abort.
const POLL: Duration = Duration::from_millis(5);
/// Elements reduced at a time; the partial sums stay in L1.
const BLOCK: usize = 2048;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a worker panicked while holding it; the state it guards (counters,
    // queues) is still consistent, and the panic itself is reported by the runner.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates the communicators of a world of `n` workers; give one to each worker thread.
pub fn world(n: usize) -> Vec<ThreadComm> {
    world_with_faults(n, &[])
}

/// Like [`world`], with injected faults: `slow` makes a worker's steps `factor` times longer
/// (it sleeps after each step), `stop` makes its next step fail with [`Error::Stopped`]. Times
/// are wall-clock seconds since the world was created.
pub fn world_with_faults(n: usize, faults: &[Fault]) -> Vec<ThreadComm> {
    world_with_options(n, faults, None)
}

/// Like [`world_with_faults`], with a watchdog: a worker that waits longer than `watchdog`
/// for the other members of a collective, or for a message, fails with [`Error::Timeout`]
/// naming the workers that did not arrive, and aborts the run — a hang becomes an error.
pub fn world_with_options(
    n: usize,
    faults: &[Fault],
    watchdog: Option<Duration>,
) -> Vec<ThreadComm> {
    assert!(n > 0, "a world needs at least one worker");
    let world = Arc::new(World {
        watchdog,
        counters: Mutex::new([0; COUNTERS]),
        server: OnceLock::new(),
        faults: faults.to_vec(),
        started: Instant::now(),
        size: n,
        aborted: AtomicBool::new(false),
        abort_reason: Mutex::new(None),
        departed: (0..n).map(|_| AtomicBool::new(false)).collect(),
        mailboxes: (0..n).map(|_| Mailbox::default()).collect(),
        registry: Mutex::new(HashMap::new()),
        all_groups: Mutex::new(Vec::new()),
        next_group_id: AtomicU64::new(1),
    });
    let group = world.new_group(0, (0..n).collect());
    (0..n)
        .map(|r| ThreadComm {
            world: world.clone(),
            group: group.clone(),
            rank: r,
            world_rank: r,
            split_seq: 0,
            stats: Arc::new(Counters::default()),
            next_request: 0,
            is_world: true,
            last_step_end: None,
        })
        .collect()
}

/// The parameter server of the threads transport: S shards in shared memory, each behind its
/// own lock, so pushes to different shards proceed in parallel and none is ever lost.
struct Server {
    ranges: Vec<std::ops::Range<usize>>,
    shards: Vec<Mutex<Vec<f32>>>,
    /// Pushes applied so far.
    version: AtomicU64,
}

/// (parent group id, split sequence number in the parent, color).
type SplitKey = (u64, u64, usize);

struct World {
    size: usize,
    /// The longest a worker waits for others before the run fails (`None`: forever).
    watchdog: Option<Duration>,
    counters: Mutex<[u64; COUNTERS]>,
    server: OnceLock<Server>,
    faults: Vec<Fault>,
    started: Instant,
    aborted: AtomicBool,
    abort_reason: Mutex<Option<(usize, String)>>,
    /// Set when a worker's world communicator is dropped (the worker finished or died).
    departed: Vec<AtomicBool>,
    mailboxes: Vec<Mailbox>,
    /// Groups being created by `split`, until every member has taken its handle.
    registry: Mutex<HashMap<SplitKey, (Arc<Group>, usize)>>,
    all_groups: Mutex<Vec<Weak<Group>>>,
    next_group_id: AtomicU64,
}

impl World {
    fn new_group(self: &Arc<Self>, id: u64, members: Vec<usize>) -> Arc<Group> {
        let g = Arc::new(Group {
            id,
            slots: (0..members.len()).map(|_| Slot::default()).collect(),
            members,
            sync: Mutex::new(BarrierState::default()),
            cv: Condvar::new(),
        });
        lock(&self.all_groups).push(Arc::downgrade(&g));
        g
    }

    fn abort_error(&self) -> Error {
        match &*lock(&self.abort_reason) {
            Some((worker, reason)) => Error::Aborted {
                worker: *worker,
                reason: reason.clone(),
            },
            None => Error::Transport("run aborted".into()),
        }
    }

    fn abort(&self, worker: usize, reason: &str) {
        {
            let mut r = lock(&self.abort_reason);
            if r.is_none() {
                *r = Some((worker, reason.to_string()));
            }
        }
        self.aborted.store(true, Ordering::SeqCst);
        for m in &self.mailboxes {
            m.cv.notify_all();
        }
        for g in lock(&self.all_groups).iter().filter_map(Weak::upgrade) {
            g.cv.notify_all();
        }
    }

    /// The error a blocked member of `members` should return now, if any.
    fn interruption(&self, members: &[usize]) -> Option<Error> {
        if self.aborted.load(Ordering::SeqCst) {
            return Some(self.abort_error());
        }
        members
            .iter()
            .find(|&&w| self.departed[w].load(Ordering::SeqCst))
            .map(|&w| Error::Left { worker: w })
    }
}

#[derive(Default)]
struct BarrierState {
    arrived: usize,
    /// Which members (by group rank) are waiting in the current generation, for the
    /// watchdog's message.
    present: Vec<bool>,
    generation: u64,
    /// Set when a member gave up waiting (abort); the group can never complete again.
    broken: bool,
}

#[derive(Default)]
struct Slot {
    send: AtomicUsize,
    recv: AtomicUsize,
    len: AtomicUsize,
}

#[derive(Clone, Copy)]
struct SlotView {
    send: usize,
    recv: usize,
    len: usize,
}

struct Group {
    id: u64,
    /// World ranks, indexed by group rank.
    members: Vec<usize>,
    slots: Vec<Slot>,
    sync: Mutex<BarrierState>,
    cv: Condvar,
}

#[derive(Default)]
struct Mailbox {
    queue: Mutex<VecDeque<Message>>,
    cv: Condvar,
}

struct Message {
    group: u64,
    src: usize,
    tag: Tag,
    data: Vec<f32>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    operations: AtomicU64,
}

impl Counters {
    fn add(&self, sent: u64, received: u64) {
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.received.fetch_add(received, Ordering::Relaxed);
        self.operations.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a barrier wait may give up when the run is aborted. Exit barriers may not: other
/// members may still be reading or writing this member's buffer.
#[derive(Clone, Copy, PartialEq)]
enum Wait {
    Abortable,
    UntilAllArrive,
}

/// One worker's communicator on the threads transport.
pub struct ThreadComm {
    world: Arc<World>,
    group: Arc<Group>,
    rank: usize,
    world_rank: usize,
    split_seq: u64,
    stats: Arc<Counters>,
    next_request: u64,
    is_world: bool,
    /// When the previous step's compute was charged (for `slow` faults).
    last_step_end: Option<Instant>,
}

impl Drop for ThreadComm {
    fn drop(&mut self) {
        if self.is_world {
            self.world.departed[self.world_rank].store(true, Ordering::SeqCst);
        }
    }
}

impl ThreadComm {
    fn barrier_wait(&self, mode: Wait) -> Result<()> {
        let g = &self.group;
        let mut st = lock(&g.sync);
        if st.broken {
            return Err(self
                .world
                .interruption(&g.members)
                .unwrap_or_else(|| self.world.abort_error()));
        }
        let generation = st.generation;
        st.arrived += 1;
        if st.arrived == g.members.len() {
            st.arrived = 0;
            st.present.iter_mut().for_each(|p| *p = false);
            st.generation += 1;
            g.cv.notify_all();
            return Ok(());
        }
        st.present.resize(g.members.len(), false);
        st.present[self.rank] = true;
        let since = Instant::now();
        loop {
            st =
                g.cv.wait_timeout(st, POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            if st.generation != generation {
                return Ok(());
            }
            if mode == Wait::Abortable {
                if let Some(err) = self.world.interruption(&g.members) {
                    st.broken = true;
                    return Err(err);
                }
                if let Some(limit) = self.world.watchdog.filter(|&l| since.elapsed() >= l) {
                    let missing: Vec<usize> = (0..g.members.len())
                        .filter(|&r| !st.present.get(r).copied().unwrap_or(false))
                        .map(|r| g.members[r])
                        .collect();
                    st.broken = true;
                    drop(st);
                    return Err(self.time_out("a collective", missing, limit));
                }
            }
        }
    }

    /// The watchdog fired: fails this worker and aborts the run, so that every other waiting
    /// worker stops too (with [`Error::Aborted`] naming this one).
    fn time_out(&self, what: &str, missing: Vec<usize>, limit: Duration) -> Error {
        let err = Error::Timeout {
            worker: self.world_rank,
            what: what.to_string(),
            missing,
            seconds: limit.as_secs_f64(),
        };
        self.world.abort(self.world_rank, &err.to_string());
        err
    }

    /// Runs one collective: publish pointers, entry barrier, `body` on the published views,
    /// exit barrier. All members must pass the same `len`.
    fn collective<R>(
        &self,
        send: usize,
        recv: usize,
        len: usize,
        what: &str,
        body: impl FnOnce(&[SlotView]) -> R,
    ) -> Result<R> {
        let slot = &self.group.slots[self.rank];
        slot.send.store(send, Ordering::Relaxed);
        slot.recv.store(recv, Ordering::Relaxed);
        slot.len.store(len, Ordering::Relaxed);
        // The barrier's mutex orders these stores before every member's loads below.
        self.barrier_wait(Wait::Abortable)?;
        let views: Vec<SlotView> = self
            .group
            .slots
            .iter()
            .map(|s| SlotView {
                send: s.send.load(Ordering::Relaxed),
                recv: s.recv.load(Ordering::Relaxed),
                len: s.len.load(Ordering::Relaxed),
            })
            .collect();
        // Every member sees the same lengths, so every member returns the same error and
        // nobody touches another buffer.
        if let Some(other) = views.iter().position(|v| v.len != views[0].len) {
            return Err(Error::Transport(format!(
                "{what}: worker {} passed {} values but worker {other} passed {} (do the workers build the same model?)",
                self.group.members[0], views[0].len, views[other].len
            )));
        }
        let out = body(&views);
        self.barrier_wait(Wait::UntilAllArrive)?;
        Ok(out)
    }

    /// Reduces chunk `self.rank` of every member's buffer and writes the result to the
    /// buffers selected by `write_to`.
    fn reduce_chunk(&self, views: &[SlotView], op: ReduceOp, write_to: Option<usize>) {
        let p = views.len();
        let n = views[0].len;
        let lo = self.rank * n / p;
        let hi = (self.rank + 1) * n / p;
        let mut acc = [0.0f32; BLOCK];
        let mut start = lo;
        while start < hi {
            let m = (hi - start).min(BLOCK);
            let acc = &mut acc[..m];
            // SAFETY: between the entry and exit barriers of this collective, elements
            // [lo, hi) of every member's buffer are read and written by this thread only
            // (chunks of different members are disjoint), every buffer holds `n` elements
            // (checked after the entry barrier), and the owners do not touch their buffers
            // until the exit barrier.
            let chunk = |j: usize| unsafe {
                std::slice::from_raw_parts_mut((views[j].recv as *mut f32).add(start), m)
            };
            acc.copy_from_slice(chunk(0));
            for j in 1..p {
                let src = chunk(j);
                match op {
                    ReduceOp::Sum | ReduceOp::Mean => {
                        acc.iter_mut().zip(src.iter()).for_each(|(a, b)| *a += *b)
                    }
                    ReduceOp::Max => acc
                        .iter_mut()
                        .zip(src.iter())
                        .for_each(|(a, b)| *a = a.max(*b)),
                    ReduceOp::Min => acc
                        .iter_mut()
                        .zip(src.iter())
                        .for_each(|(a, b)| *a = a.min(*b)),
                }
            }
            if op == ReduceOp::Mean {
                let pf = p as f32;
                acc.iter_mut().for_each(|a| *a /= pf);
            }
            match write_to {
                Some(root) => chunk(root).copy_from_slice(acc),
                None => (0..p).for_each(|j| chunk(j).copy_from_slice(acc)),
            }
            start += m;
        }
    }

    fn gather<T: Copy>(&mut self, send: &[T], recv: &mut [T], what: &str) -> Result<()> {
        let p = self.size();
        let k = send.len();
        if recv.len() != p * k {
            return Err(Error::Transport(format!(
                "{what}: receive buffer holds {} values, expected {p}·{k}",
                recv.len()
            )));
        }
        let recv_ptr = recv.as_mut_ptr() as usize;
        self.collective(send.as_ptr() as usize, recv_ptr, k, what, |views| {
            for (j, v) in views.iter().enumerate() {
                // SAFETY: member j's send buffer holds k elements of T (lengths checked) and is
                // only read by anyone until the exit barrier; our own recv buffer is written by
                // this thread alone.
                let src = unsafe { std::slice::from_raw_parts(v.send as *const T, k) };
                let dst =
                    unsafe { std::slice::from_raw_parts_mut((recv_ptr as *mut T).add(j * k), k) };
                dst.copy_from_slice(src);
            }
        })?;
        let bytes = ((p - 1) * k * std::mem::size_of::<T>()) as u64;
        self.stats.add(bytes, bytes);
        Ok(())
    }

    fn mailbox_take(&self, src: usize, tag: Tag, buf: &mut [f32]) -> Result<()> {
        let mailbox = &self.world.mailboxes[self.world_rank];
        let src_world = self.group.members[src];
        let mut queue = lock(&mailbox.queue);
        let since = Instant::now();
        loop {
            if let Some(i) = queue
                .iter()
                .position(|m| m.group == self.group.id && m.src == src && m.tag == tag)
            {
                let msg = queue.remove(i).expect("found above");
                if msg.data.len() != buf.len() {
                    return Err(Error::Transport(format!(
                        "message from worker {src_world} (tag {tag}) has {} values, the receiver expected {}",
                        msg.data.len(),
                        buf.len()
                    )));
                }
                buf.copy_from_slice(&msg.data);
                self.stats.add(0, 4 * buf.len() as u64);
                return Ok(());
            }
            if let Some(err) = self.world.interruption(&[src_world]) {
                return Err(err);
            }
            if let Some(limit) = self.world.watchdog.filter(|&l| since.elapsed() >= l) {
                drop(queue);
                return Err(self.time_out(
                    &format!("a receive (tag {tag})"),
                    vec![src_world],
                    limit,
                ));
            }
            queue = mailbox
                .cv
                .wait_timeout(queue, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.members.len()
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let p = self.size();
        if p == 1 {
            return Ok(());
        }
        let ptr = buf.as_mut_ptr() as usize;
        self.collective(ptr, ptr, buf.len(), "all-reduce", |views| {
            self.reduce_chunk(views, op, None)
        })?;
        let bytes = (2 * (p - 1) * 4 * buf.len() / p) as u64;
        self.stats.add(bytes, bytes);
        Ok(())
    }

    fn reduce(&mut self, buf: &mut [f32], root: usize, op: ReduceOp) -> Result<()> {
        let p = self.size();
        check_rank("reduce root", root, p)?;
        if p == 1 {
            return Ok(());
        }
        let ptr = buf.as_mut_ptr() as usize;
        self.collective(ptr, ptr, buf.len(), "reduce", |views| {
            self.reduce_chunk(views, op, Some(root))
        })?;
        let bytes = 4 * buf.len() as u64;
        if self.rank == root {
            self.stats.add(0, bytes);
        } else {
            self.stats.add(bytes, 0);
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        let p = self.size();
        check_rank("broadcast root", root, p)?;
        if p == 1 {
            return Ok(());
        }
        let me = self.rank;
        let len = buf.len();
        let buf_ptr = buf.as_mut_ptr() as usize;
        self.collective(buf_ptr, buf_ptr, len, "broadcast", |views| {
            if me != root {
                // SAFETY: the root's buffer holds `len` elements and nobody writes it between
                // the barriers; our own buffer is written by this thread alone.
                let src =
                    unsafe { std::slice::from_raw_parts(views[root].send as *const f32, len) };
                let dst = unsafe { std::slice::from_raw_parts_mut(buf_ptr as *mut f32, len) };
                dst.copy_from_slice(src);
            }
        })?;
        let bytes = 4 * len as u64;
        if me == root {
            self.stats.add(bytes, 0);
        } else {
            self.stats.add(0, bytes);
        }
        Ok(())
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.gather(send, recv, "all-gather")
    }

    fn all_gather_f64(&mut self, send: &[f64], recv: &mut [f64]) -> Result<()> {
        self.gather(send, recv, "all-gather")
    }

    fn barrier(&mut self) -> Result<()> {
        self.barrier_wait(Wait::Abortable)
    }

    fn send(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<()> {
        check_rank("send destination", dest, self.size())?;
        let mailbox = &self.world.mailboxes[self.group.members[dest]];
        lock(&mailbox.queue).push_back(Message {
            group: self.group.id,
            src: self.rank,
            tag,
            data: data.to_vec(),
        });
        mailbox.cv.notify_all();
        self.stats.add(4 * data.len() as u64, 0);
        Ok(())
    }

    fn recv(&mut self, src: usize, tag: Tag, buf: &mut [f32]) -> Result<()> {
        check_rank("receive source", src, self.size())?;
        self.mailbox_take(src, tag, buf)
    }

    fn isend(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<SendRequest> {
        self.send(dest, tag, data)?;
        self.next_request += 1;
        Ok(SendRequest {
            id: self.next_request,
        })
    }

    fn irecv(&mut self, src: usize, tag: Tag, len: usize) -> Result<RecvRequest> {
        check_rank("receive source", src, self.size())?;
        self.next_request += 1;
        Ok(RecvRequest {
            id: self.next_request,
            src,
            tag,
            len,
        })
    }

    fn wait_send(&mut self, _req: SendRequest) -> Result<()> {
        // Sends are buffered in the receiver's mailbox: nothing left to wait for.
        Ok(())
    }

    fn wait_recv(&mut self, req: RecvRequest, buf: &mut [f32]) -> Result<()> {
        check_request_len(&req, buf)?;
        self.mailbox_take(req.src, req.tag, buf)
    }

    fn test_recv(&mut self, req: &RecvRequest) -> Result<bool> {
        let queue = lock(&self.world.mailboxes[self.world_rank].queue);
        Ok(queue
            .iter()
            .any(|m| m.group == self.group.id && m.src == req.src && m.tag == req.tag))
    }

    fn split(&mut self, color: usize, key: usize) -> Result<Box<dyn Communicator>> {
        let p = self.size();
        let mut all = vec![0.0f64; 2 * p];
        self.all_gather_f64(&[color as f64, key as f64], &mut all)?;
        let mut mine: Vec<(usize, usize)> = (0..p)
            .filter(|&r| all[2 * r] == color as f64)
            .map(|r| (all[2 * r + 1] as usize, r))
            .collect();
        mine.sort_unstable();
        let members: Vec<usize> = mine.iter().map(|&(_, r)| self.group.members[r]).collect();
        let new_rank = mine
            .iter()
            .position(|&(_, r)| r == self.rank)
            .expect("caller is in its own color");
        let seq = self.split_seq;
        self.split_seq += 1;
        let group = {
            let mut reg = lock(&self.world.registry);
            let key3 = (self.group.id, seq, color);
            let entry = reg.entry(key3).or_insert_with(|| {
                let id = self.world.next_group_id.fetch_add(1, Ordering::SeqCst);
                (self.world.new_group(id, members.clone()), 0)
            });
            entry.1 += 1;
            let g = entry.0.clone();
            if entry.1 == g.members.len() {
                reg.remove(&key3);
            }
            g
        };
        Ok(Box::new(ThreadComm {
            world: self.world.clone(),
            group,
            rank: new_rank,
            world_rank: self.world_rank,
            split_seq: 0,
            stats: self.stats.clone(),
            next_request: 0,
            is_world: false,
            last_step_end: None,
        }))
    }

    fn abort(&self, reason: &str) {
        self.world.abort(self.world_rank, reason);
    }

    fn stats(&self) -> CommStats {
        CommStats {
            bytes_sent: self.stats.sent.load(Ordering::Relaxed),
            bytes_received: self.stats.received.load(Ordering::Relaxed),
            operations: self.stats.operations.load(Ordering::Relaxed),
        }
    }

    fn stopped_by_fault(&self) -> Option<f64> {
        let elapsed = self.world.started.elapsed().as_secs_f64();
        self.world
            .faults
            .iter()
            .any(|f| f.worker == self.world_rank && f.kind == FaultKind::Stop && elapsed >= f.at)
            .then_some(elapsed)
    }

    fn compute(&mut self, _step: u64) -> Result<()> {
        let me = self.world_rank;
        let now = Instant::now();
        let elapsed = now.duration_since(self.world.started).as_secs_f64();
        let mut factor = 1.0;
        for fault in self
            .world
            .faults
            .iter()
            .filter(|f| f.worker == me && elapsed >= f.at)
        {
            match fault.kind {
                FaultKind::Slow => factor *= fault.factor,
                FaultKind::Stop => {
                    return Err(Error::Stopped {
                        worker: me,
                        at: elapsed,
                    })
                }
            }
        }
        if factor > 1.0 {
            // Stretch the time since the previous step (its gradient, optimizer and
            // communication) by the factor: the worker behaves like a slower machine.
            if let Some(previous) = self.last_step_end {
                std::thread::sleep(now.duration_since(previous).mul_f64(factor - 1.0));
            }
        }
        self.last_step_end = Some(Instant::now());
        Ok(())
    }

    fn counter(&mut self, id: usize, op: CounterOp) -> Result<u64> {
        check_counter(id)?;
        let mut counters = lock(&self.world.counters);
        let old = counters[id];
        counters[id] = op.apply(old);
        self.stats.add(8, 8);
        Ok(old)
    }

    fn server_init(&mut self, init: &[f32], shards: usize) -> Result<()> {
        let server = self.world.server.get_or_init(|| {
            let ranges = shard_ranges(init.len(), shards);
            Server {
                shards: ranges
                    .iter()
                    .map(|r| Mutex::new(init[r.clone()].to_vec()))
                    .collect(),
                ranges,
                version: AtomicU64::new(0),
            }
        });
        let len = server.ranges.last().map_or(0, |r| r.end);
        if len != init.len() || server.ranges.len() != shard_ranges(init.len(), shards).len() {
            return Err(Error::Transport(format!(
                "parameter server holds {len} values in {} shards, worker {} asked for {} values in {shards}",
                server.ranges.len(),
                self.world_rank,
                init.len()
            )));
        }
        Ok(())
    }

    fn server_pull(&mut self, buf: &mut [f32]) -> Result<u64> {
        let server = self.server(buf.len())?;
        let version = server.version.load(Ordering::SeqCst);
        for (range, shard) in server.ranges.iter().zip(&server.shards) {
            buf[range.clone()].copy_from_slice(&lock(shard));
        }
        self.stats.add(0, 4 * buf.len() as u64);
        Ok(version)
    }

    fn server_push(&mut self, delta: &[f32]) -> Result<()> {
        self.push_counted(delta, 4 * delta.len() as u64)
    }

    /// The server is in this process: the pushing worker decodes, and the counters count the
    /// encoded bytes.
    fn server_push_encoded(&mut self, push: &EncodedPush<'_>) -> Result<()> {
        self.push_counted(&push.decoded()?, push.wire_bytes())
    }

    fn probe_any(&mut self, tag: Tag) -> Result<Option<(usize, usize)>> {
        if self.world.aborted.load(Ordering::SeqCst) {
            return Err(self.world.abort_error());
        }
        let queue = lock(&self.world.mailboxes[self.world_rank].queue);
        Ok(queue
            .iter()
            .find(|m| m.group == self.group.id && m.tag == tag)
            .map(|m| (m.src, m.data.len())))
    }

    fn pause(&mut self) -> Result<()> {
        if self.world.aborted.load(Ordering::SeqCst) {
            return Err(self.world.abort_error());
        }
        std::thread::sleep(Duration::from_micros(50));
        Ok(())
    }
}

impl ThreadComm {
    /// Adds `delta` to the server, shard by shard, counting `wire_bytes` sent.
    fn push_counted(&mut self, delta: &[f32], wire_bytes: u64) -> Result<()> {
        let server = self.server(delta.len())?;
        for (range, shard) in server.ranges.iter().zip(&server.shards) {
            let mut values = lock(shard);
            values
                .iter_mut()
                .zip(&delta[range.clone()])
                .for_each(|(v, d)| *v += *d);
        }
        server.version.fetch_add(1, Ordering::SeqCst);
        self.stats.add(wire_bytes, 0);
        Ok(())
    }

    fn server(&self, len: usize) -> Result<&Server> {
        let server = self.world.server.get().ok_or_else(|| {
            Error::Transport("the parameter server is used before server_init".into())
        })?;
        let have = server.ranges.last().map_or(0, |r| r.end);
        if have != len {
            return Err(Error::Transport(format!(
                "parameter server holds {have} values, worker {} used {len}",
                self.world_rank
            )));
        }
        Ok(server)
    }
}

/// Runs `f(comm)` on `n` worker threads and returns their results in rank order. A panic in
/// a worker becomes that worker's error (and aborts the others) instead of tearing down the
/// process.
pub fn run_workers<T, F>(n: usize, f: F) -> Vec<Result<T>>
where
    T: Send,
    F: Fn(&mut ThreadComm) -> Result<T> + Sync,
{
    super::spawn_workers(world(n), f)
}

/// [`run_workers`] with injected faults (see [`world_with_faults`]).
pub fn run_workers_with_faults<T, F>(n: usize, faults: &[Fault], f: F) -> Vec<Result<T>>
where
    T: Send,
    F: Fn(&mut ThreadComm) -> Result<T> + Sync,
{
    super::spawn_workers(world_with_faults(n, faults), f)
}

/// [`run_workers`] with injected faults and a watchdog (see [`world_with_options`]).
pub fn run_workers_with_options<T, F>(
    n: usize,
    faults: &[Fault],
    watchdog: Option<Duration>,
    f: F,
) -> Vec<Result<T>>
where
    T: Send,
    F: Fn(&mut ThreadComm) -> Result<T> + Sync,
{
    super::spawn_workers(world_with_options(n, faults, watchdog), f)
}

pub use super::panic_message;

impl std::fmt::Debug for ThreadComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ThreadComm(rank {} of {}, world rank {} of {})",
            self.rank,
            self.size(),
            self.world_rank,
            self.world.size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::CommunicatorExt;

    fn all_ok<T: std::fmt::Debug>(v: Vec<Result<T>>) -> Vec<T> {
        v.into_iter().map(|r| r.unwrap()).collect()
    }

    #[test]
    fn all_reduce_every_size_up_to_17() {
        for n in 1..=17 {
            let out = all_ok(run_workers(n, |c| {
                // Length 1000 is not a multiple of most n: chunks are uneven.
                let mut buf: Vec<f32> = (0..1000).map(|i| (c.rank() * 1000 + i) as f32).collect();
                c.all_reduce(&mut buf, ReduceOp::Sum)?;
                let mut mean = vec![c.rank() as f32; 3];
                c.all_reduce(&mut mean, ReduceOp::Mean)?;
                let mut mx = vec![c.rank() as f32];
                c.all_reduce(&mut mx, ReduceOp::Max)?;
                Ok((buf, mean, mx))
            }));
            for (buf, mean, mx) in &out {
                for (i, v) in buf.iter().enumerate() {
                    // Σ_r (1000 r + i) = 1000·n(n−1)/2 + n·i
                    let want = 1000.0 * (n * (n - 1) / 2) as f32 + (n * i) as f32;
                    assert_eq!(*v, want, "n = {n}, i = {i}");
                }
                // mean of 0..n = (n−1)/2
                assert_eq!(mean[0], (n - 1) as f32 / 2.0);
                assert_eq!(mx[0], (n - 1) as f32);
            }
        }
    }

    #[test]
    fn broadcast_reduce_gather_every_size_up_to_17() {
        for n in 1..=17 {
            let root = n / 2;
            let out = all_ok(run_workers(n, |c| {
                let r = c.rank() as f32;
                let mut b = vec![r; 5];
                c.broadcast(&mut b, root)?;
                let mut red = vec![r + 1.0; 4];
                c.reduce(&mut red, root, ReduceOp::Sum)?;
                let mut g = vec![0.0; 2 * c.size()];
                c.all_gather(&[r, -r], &mut g)?;
                let s = c.gather_scalar(r as f64 * 0.5)?;
                c.barrier()?;
                Ok((c.rank(), b, red, g, s))
            }));
            for (rank, b, red, g, s) in out {
                assert!(b.iter().all(|&v| v == root as f32));
                // root: Σ (r + 1) = n(n+1)/2 ; others unchanged
                let want = if rank == root {
                    (n * (n + 1) / 2) as f32
                } else {
                    rank as f32 + 1.0
                };
                assert!(red.iter().all(|&v| v == want));
                for j in 0..n {
                    assert_eq!((g[2 * j], g[2 * j + 1]), (j as f32, -(j as f32)));
                    assert_eq!(s[j], j as f64 * 0.5);
                }
            }
        }
    }

    #[test]
    fn point_to_point_ring_and_nonblocking() {
        for n in 1..=17 {
            let out = all_ok(run_workers(n, |c| {
                let (r, p) = (c.rank(), c.size());
                let next = (r + 1) % p;
                let prev = (r + p - 1) % p;
                // Two messages with different tags, received in the opposite order.
                c.send(next, 1, &[r as f32; 3])?;
                c.send(next, 2, &[r as f32 * 10.0])?;
                let req = c.irecv(prev, 1, 3)?;
                let mut b = [0.0f32];
                c.recv(prev, 2, &mut b)?;
                let mut a = [0.0f32; 3];
                c.wait_recv(req, &mut a)?;
                Ok((prev, a, b))
            }));
            for (prev, a, b) in out {
                assert_eq!(a, [prev as f32; 3]);
                assert_eq!(b, [prev as f32 * 10.0]);
            }
        }
    }

    #[test]
    fn messages_with_one_tag_keep_their_order() {
        let out = all_ok(run_workers(2, |c| {
            if c.rank() == 0 {
                for i in 0..50 {
                    c.send(1, 7, &[i as f32])?;
                }
                Ok(vec![])
            } else {
                let mut got = vec![];
                for _ in 0..50 {
                    let mut b = [0.0];
                    c.recv(0, 7, &mut b)?;
                    got.push(b[0]);
                }
                Ok(got)
            }
        }));
        assert_eq!(out[1], (0..50).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn split_makes_groups_in_key_order() {
        for n in 1..=17 {
            let out = all_ok(run_workers(n, |c| {
                // color: parity; key: reversed rank, so the highest rank becomes group rank 0.
                let mut sub = c.split(c.rank() % 2, n - c.rank())?;
                let mut v = vec![c.rank() as f32];
                sub.all_reduce(&mut v, ReduceOp::Sum)?;
                let mut first = vec![c.rank() as f32];
                sub.broadcast(&mut first, 0)?;
                // A second split of the sub-group works too (groups of one).
                let mut single = sub.split(sub.rank(), 0)?;
                single.barrier()?;
                Ok((
                    c.rank(),
                    sub.rank(),
                    sub.size(),
                    v[0],
                    first[0],
                    single.size(),
                ))
            }));
            for (rank, sub_rank, sub_size, sum, first, single) in out {
                let same: Vec<usize> = (0..n).filter(|r| r % 2 == rank % 2).collect();
                assert_eq!(sub_size, same.len());
                assert_eq!(sum, same.iter().sum::<usize>() as f32);
                assert_eq!(first, *same.last().unwrap() as f32);
                assert_eq!(
                    sub_rank,
                    same.iter().rev().position(|&r| r == rank).unwrap()
                );
                assert_eq!(single, 1);
            }
        }
    }

    #[test]
    fn length_mismatch_is_an_error_on_every_worker() {
        let out = run_workers(3, |c| {
            let mut buf = vec![0.0; 10 + c.rank()];
            c.all_reduce(&mut buf, ReduceOp::Sum)
        });
        for r in out {
            let msg = r.unwrap_err().to_string();
            assert!(
                msg.contains("passed 10 values but worker 1 passed 11"),
                "{msg}"
            );
        }
    }

    #[test]
    fn an_error_on_one_worker_ends_the_others() {
        let out: Vec<Result<()>> = run_workers(4, |c| {
            if c.rank() == 2 {
                return Err(Error::Config("worker 2 failed on purpose".into()));
            }
            let mut buf = vec![1.0; 8];
            loop {
                c.all_reduce(&mut buf, ReduceOp::Sum)?;
            }
        });
        assert!(matches!(out[2], Err(Error::Config(_))));
        for (r, res) in out.iter().enumerate() {
            if r != 2 {
                match res {
                    Err(Error::Aborted { worker: 2, reason }) => {
                        assert!(reason.contains("on purpose"))
                    }
                    other => panic!("worker {r}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_panic_becomes_an_error() {
        let out = run_workers(2, |c| {
            if c.rank() == 1 {
                panic!("boom");
            }
            let mut b = [0.0f32];
            c.recv(1, 0, &mut b)?;
            Ok(())
        });
        assert!(matches!(&out[1], Err(Error::Panic { worker: 1, message }) if message == "boom"));
        assert!(out[0].is_err());
    }

    #[test]
    fn a_worker_that_leaves_early_does_not_hang_the_rest() {
        let out = run_workers(3, |c| {
            if c.rank() == 0 {
                return Ok(()); // finishes without the collective below
            }
            c.barrier()
        });
        assert!(out[0].is_ok());
        for r in &out[1..] {
            assert!(r
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("worker 0 left the run"));
        }
    }

    #[test]
    fn stats_follow_the_documented_conventions() {
        let out = all_ok(run_workers(4, |c| {
            let mut b = vec![0.0f32; 100]; // 400 bytes
            c.all_reduce(&mut b, ReduceOp::Sum)?; // 2·3/4·400 = 600 each way
            c.broadcast(&mut b, 0)?; // root sends 400, others receive 400
            Ok((c.rank(), c.stats()))
        }));
        for (rank, s) in out {
            let (sent, recv) = if rank == 0 { (1000, 600) } else { (600, 1000) };
            assert_eq!(
                (s.bytes_sent, s.bytes_received, s.operations),
                (sent, recv, 2)
            );
        }
    }

    #[test]
    fn agree_detects_disagreement() {
        let out = run_workers(3, |c| {
            let size = if c.rank() == 2 { 11 } else { 10 };
            c.agree("model size", size)
        });
        for r in out {
            assert!(r
                .unwrap_err()
                .to_string()
                .contains("worker 0 has 10, worker 2 has 11"));
        }
    }
}
