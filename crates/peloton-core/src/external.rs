//! A training loop outside peloton as the learner of a worker: a PyTorch loop in Python (the
//! `peloton` package) drives every registered algorithm, with its model's tensors as views of
//! the worker's flat buffers, on any transport.
//!
//! The runner's loops stay as they are. Each worker's learner is an [`ExternalLearner`] whose
//! calls become requests to the worker's outside loop, answered through a [`LoopHandle`]; the
//! runner thread waits while the loop works, and the loop waits while the runner communicates,
//! so the two take turns on the shared [`SharedBuffer`]s (no copy per step):
//!
//! ```text
//! runner (a worker thread)                      outside loop (its own thread)
//! factory.build ── waits for ─────────────────  attach(layout): model written into `params`
//! loss_and_grad ── Request::Gradient ───────→   forward, backward into `grad`
//!               ←─────────────── Reply::Loss ── reply
//! before_step                                   (all-reduce SGD averages `grad` here)
//! optimizer_step ─ Request::OptimizerStep ──→   its optimizer steps `params` (if it owns one)
//! after_step                                    (LSGD's pull, gossip, averaging here)
//! evaluate ─────── Request::Evaluate ───────→   test loss and accuracy of a model
//! run over ───────────────────────────────→     next() says Finished
//! ```
//!
//! A loop that fails or returns early [`LoopHandle::leave`]s: the runner's pending call fails
//! with the loop's message, which ends the run as any learner error does.
//!
//! **A model on a GPU** cannot be a view of host memory. A loop that attaches with
//! [`Attach::mirrored`] keeps its model where it is, and the shared buffers become a mirror of
//! it: the learner tracks which side holds the newest parameters, gradient and model state, and
//! asks for a copy ([`Request::ToHost`], [`Request::FromHost`]) only where the runner or the
//! algorithm uses the buffers (announced through [`Learner::host_access`], from
//! [`crate::algorithms::Algorithm::touches`]). LSGD with τ = 8 copies the model twice every 8
//! steps; all-reduce SGD copies the gradient out and back every step, and nothing else.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::checkpoint::StateDict;
use crate::flat::SharedBuffer;
use crate::layout::ParamLayout;
use crate::learner::{Access, Evaluation, HostBuffers, Learner, LearnerContext, LearnerFactory};
use crate::{Error, Result};

/// What the runner asks of an outside loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Request {
    /// Compute the next mini-batch's loss and write its gradient into the gradient buffer, at
    /// the parameters in the parameter buffer. `index` counts the requests from 0 (a worker
    /// reset to the leader asks twice in one step).
    Gradient { index: u64 },
    /// Step the loop's own optimizer on the parameter buffer with the gradient buffer, at
    /// learning rate `lr` (only asked of a loop attached with `owns_optimizer`).
    OptimizerStep { lr: f32 },
    /// Forget the loop optimizer's state (momentum): this worker diverged and was reset.
    ClearOptimizer,
    /// Evaluate a model on held-out data: the worker's own parameter buffer (`own`), or the
    /// model in the evaluation buffer (the workers' average, the leader's, the center).
    Evaluate { own: bool },
    /// Copy these of the model's buffers into the shared ones: the runner is about to use
    /// them. Asked only of a loop attached with [`Attach::mirrored`].
    ToHost(HostBuffers),
    /// Load these shared buffers into the model: the runner changed them. Asked only of a loop
    /// attached with [`Attach::mirrored`].
    FromHost(HostBuffers),
    /// A checkpoint: answer with the loop's own state ([`Reply::State`]) — its optimizer's
    /// (momentum), its model's other buffers, its data position — whatever it needs besides
    /// the parameters (which the runner saves) to go on exactly from here.
    SaveState,
    /// A resume: restore the state the loop saved ([`LoopHandle::state_to_load`]) before the
    /// next gradient.
    LoadState,
}

/// The outside loop's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// To [`Request::Gradient`]: the mini-batch loss.
    Loss(f64),
    /// To [`Request::OptimizerStep`] and [`Request::ClearOptimizer`].
    Done,
    /// To [`Request::Evaluate`].
    Evaluation(Evaluation),
    /// To [`Request::SaveState`]: the loop's state, in a form of its choosing.
    State(Vec<u8>),
}

/// What the loop gets from [`LoopHandle::next`].
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Request(Request),
    /// The run is over for this worker (finished, or failed: the run's result says which).
    Finished,
}

/// What an outside loop tells the runner about its model when it attaches.
#[derive(Debug, Clone)]
pub struct Attach {
    /// The parameter tensors' names and shapes, in the flat buffer's order.
    pub layout: ParamLayout,
    /// The model's initial parameters (`layout.len()` values); worker 0's are broadcast to
    /// every worker when the run asks for it.
    pub initial: Vec<f32>,
    /// Whether the loop steps its own optimizer ([`Request::OptimizerStep`]) instead of
    /// peloton's `[optimizer]`.
    pub owns_optimizer: bool,
    /// Local steps in one pass over this worker's data, when the loop knows it (for an
    /// `epochs` budget).
    pub steps_per_epoch: Option<u64>,
    /// The model's state that the runner averages over the workers before every evaluation
    /// (BatchNorm running statistics), its initial values; empty when there is none.
    pub state: Vec<f32>,
    /// Whether the model keeps memory of its own (a GPU) which the shared buffers mirror, with
    /// copies on [`Request::ToHost`] and [`Request::FromHost`]; `false`: the model's tensors are
    /// views of the shared buffers.
    pub mirrored: bool,
}

/// The buffers an attached loop works in: its model's tensors are views of them.
#[derive(Clone)]
pub struct Buffers {
    pub params: Arc<SharedBuffer>,
    pub grad: Arc<SharedBuffer>,
    /// Where a model to evaluate other than the worker's own is put ([`Request::Evaluate`]).
    pub eval: Arc<SharedBuffer>,
    /// The averaged model state ([`Attach::state`]): the loop's BatchNorm statistics are views
    /// of it, and the runner replaces it by the workers' average before evaluations.
    pub state: Arc<SharedBuffer>,
}

/// One worker's meeting point of runner and loop.
struct Slot {
    rank: usize,
    state: Mutex<SlotState>,
    changed: Condvar,
}

#[derive(Default)]
struct SlotState {
    /// What the loop attached.
    attached: Option<(Attach, Buffers)>,
    /// The runner's request the loop has not taken yet.
    request: Option<Request>,
    /// The request the loop took and has not answered yet.
    answering: Option<Request>,
    reply: Option<Reply>,
    /// The run is over ([`ExternalLoops::close`]).
    finished: bool,
    /// The state a resumed loop restores ([`Request::LoadState`]).
    to_load: Option<Vec<u8>>,
    /// The loop left: `Some(None)` when it returned, `Some(Some(message))` when it failed.
    left: Option<Option<String>>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding the lock cannot leave the state half-changed (every change is
        // one assignment), so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, SlotState>) -> MutexGuard<'a, SlotState> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    /// The runner's error when the loop left while the runner needs it.
    fn left_error(&self, left: &Option<String>, what: &str) -> Error {
        Error::Learner {
            worker: self.rank,
            message: match left {
                Some(message) => format!("the training loop failed: {message}"),
                None => format!("the training loop returned {what}"),
            },
        }
    }
}

/// The outside loops of the workers in this process: the runner's side is the
/// [`LearnerFactory`], each loop's side its [`LoopHandle`].
pub struct ExternalLoops {
    ranks: Range<usize>,
    slots: Vec<Arc<Slot>>,
}

impl ExternalLoops {
    /// Meeting points for the workers `ranks` (all of them on threads and the simulator, one
    /// on MPI).
    pub fn new(ranks: Range<usize>) -> Self {
        let slots = ranks
            .clone()
            .map(|rank| {
                Arc::new(Slot {
                    rank,
                    state: Mutex::new(SlotState::default()),
                    changed: Condvar::new(),
                })
            })
            .collect();
        Self { ranks, slots }
    }

    pub fn ranks(&self) -> Range<usize> {
        self.ranks.clone()
    }

    /// The loop's side of worker `rank`.
    pub fn handle(&self, rank: usize) -> Option<LoopHandle> {
        let slot = self.slot(rank)?;
        Some(LoopHandle {
            slot: Arc::clone(slot),
        })
    }

    /// Ends the run for every loop: call it when the run has returned, however it ended. Until
    /// then a loop whose worker is done keeps waiting, since the runner may still ask it for an
    /// evaluation (an asynchronous run's final model is evaluated by worker 0's learner once
    /// every worker is done).
    pub fn close(&self) {
        for slot in &self.slots {
            slot.lock().finished = true;
            slot.changed.notify_all();
        }
    }

    fn slot(&self, rank: usize) -> Option<&Arc<Slot>> {
        rank.checked_sub(self.ranks.start)
            .and_then(|i| self.slots.get(i))
    }
}

impl LearnerFactory for ExternalLoops {
    /// Waits for worker `ctx.rank`'s loop to attach. Every learner built for a worker talks to
    /// the same loop (the runner builds a second one for an asynchronous run's final
    /// evaluation).
    fn build(&self, ctx: LearnerContext) -> Result<Box<dyn Learner>> {
        let slot = self.slot(ctx.rank).ok_or_else(|| {
            Error::Config(format!(
                "worker {} has no training loop in this process (its loops are workers {}..{})",
                ctx.rank, self.ranks.start, self.ranks.end
            ))
        })?;
        let mut state = slot.lock();
        loop {
            if let Some((attach, buffers)) = &state.attached {
                return Ok(Box::new(ExternalLearner {
                    slot: Arc::clone(slot),
                    attach: attach.clone(),
                    buffers: buffers.clone(),
                    gradients: 0,
                    mirror: attach.mirrored.then(Mirror::new),
                }));
            }
            if let Some(left) = &state.left {
                return Err(slot.left_error(left, "before attaching its model"));
            }
            if state.finished {
                return Err(Error::Config("the run is over".into()));
            }
            state = slot.wait(state);
        }
    }
}

/// The runner's side: a [`Learner`] whose work is done by the outside loop.
pub struct ExternalLearner {
    slot: Arc<Slot>,
    attach: Attach,
    buffers: Buffers,
    gradients: u64,
    /// Where the newest copy of each buffer is, for a mirrored model.
    mirror: Option<Mirror>,
}

/// Which side holds the newest values of one buffer of a mirrored model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Newest {
    Both,
    /// The loop's model (it computed a gradient, stepped its optimizer).
    Loop,
    /// The shared buffer (the runner wrote it).
    Host,
}

/// The sides of a mirrored model's parameters, gradient and model state.
#[derive(Debug, Clone, Copy)]
struct Mirror {
    params: Newest,
    grad: Newest,
    state: Newest,
}

impl Mirror {
    /// At the start the runner initializes the host parameters (and may broadcast worker 0's).
    fn new() -> Self {
        Mirror {
            params: Newest::Host,
            grad: Newest::Both,
            state: Newest::Both,
        }
    }

    /// Those of `which` whose newest values are on `side`.
    fn on(&self, which: HostBuffers, side: Newest) -> HostBuffers {
        HostBuffers {
            params: which.params && self.params == side,
            grad: which.grad && self.grad == side,
            state: which.state && self.state == side,
        }
    }

    /// Marks `which` as newest on `side`.
    fn set(&mut self, which: HostBuffers, side: Newest) {
        for (named, slot) in [
            (which.params, &mut self.params),
            (which.grad, &mut self.grad),
            (which.state, &mut self.state),
        ] {
            if named {
                *slot = side;
            }
        }
    }
}

impl ExternalLearner {
    /// Asks the loop and waits for its answer.
    fn call(&self, request: Request) -> Result<Reply> {
        let slot = &self.slot;
        let mut state = slot.lock();
        if let Some(left) = &state.left {
            return Err(slot.left_error(left, "before the run's end"));
        }
        state.request = Some(request);
        state.reply = None;
        slot.changed.notify_all();
        loop {
            if let Some(reply) = state.reply.take() {
                return Ok(reply);
            }
            if let Some(left) = &state.left {
                return Err(slot.left_error(left, "before the run's end"));
            }
            state = slot.wait(state);
        }
    }

    /// Copies those of `which` whose newest values are on side `newest` to the other side
    /// (`ToHost` from the loop, `FromHost` from the host buffers); both then hold them. Nothing
    /// for a model in the shared buffers.
    fn bring_across(&mut self, which: HostBuffers, newest: Newest) -> Result<()> {
        let Some(mirror) = self.mirror else {
            return Ok(());
        };
        let stale = mirror.on(which, newest);
        let request = match newest {
            Newest::Loop if stale.any() => Request::ToHost(stale),
            Newest::Host if stale.any() => Request::FromHost(stale),
            _ => return Ok(()),
        };
        self.call_done(request)?;
        if let Some(m) = self.mirror.as_mut() {
            m.set(stale, Newest::Both);
        }
        Ok(())
    }

    /// Before a request that uses `needs` of the loop's model: loads the host buffers the
    /// runner changed since (a mirrored model).
    fn load_into_loop(&mut self, needs: HostBuffers) -> Result<()> {
        self.bring_across(needs, Newest::Host)
    }

    /// After a request that changed `changed` of the loop's model (a mirrored model).
    fn loop_changed(&mut self, changed: HostBuffers) {
        if let Some(m) = self.mirror.as_mut() {
            m.set(changed, Newest::Loop);
        }
    }

    /// Asks for what the loop answers with [`Reply::Done`].
    fn call_done(&self, request: Request) -> Result<()> {
        match self.call(request)? {
            Reply::Done => Ok(()),
            other => Err(self.unexpected(request, other)),
        }
    }

    /// Checks that the runner hands over the shared buffers themselves.
    fn ensure_shared(&self, what: &str, given: *const f32, shared: &SharedBuffer) -> Result<()> {
        if std::ptr::eq(given, shared.as_ptr()) {
            Ok(())
        } else {
            Err(Error::Learner {
                worker: self.slot.rank,
                message: format!("an outside training loop works on its shared {what} buffer only"),
            })
        }
    }

    fn unexpected(&self, request: Request, reply: Reply) -> Error {
        Error::Learner {
            worker: self.slot.rank,
            message: format!("the training loop answered {request:?} with {reply:?}"),
        }
    }
}

impl Learner for ExternalLearner {
    fn layout(&self) -> &ParamLayout {
        &self.attach.layout
    }

    /// The loop wrote its model's initial parameters when it attached.
    fn init_params(&mut self, params: &mut [f32]) {
        if !std::ptr::eq(params.as_ptr(), self.buffers.params.as_ptr()) {
            params.copy_from_slice(&self.attach.initial);
        }
    }

    fn loss_and_grad(&mut self, params: &[f32], grad: &mut [f32]) -> Result<f64> {
        self.ensure_shared("parameter", params.as_ptr(), &self.buffers.params)?;
        self.ensure_shared("gradient", grad.as_ptr(), &self.buffers.grad)?;
        // The gradient too, where the runner left one the loop's backward would add to.
        self.load_into_loop(HostBuffers::PARAMS_AND_GRAD.union(HostBuffers::STATE))?;
        let request = Request::Gradient {
            index: self.gradients,
        };
        self.gradients += 1;
        let reply = self.call(request)?;
        // A training forward also moves the model state (BatchNorm's running statistics).
        self.loop_changed(HostBuffers {
            state: !self.buffers.state.is_empty(),
            ..HostBuffers::GRAD
        });
        match reply {
            Reply::Loss(loss) => Ok(loss),
            other => Err(self.unexpected(request, other)),
        }
    }

    fn evaluate(&mut self, params: &[f32]) -> Result<Evaluation> {
        let own = std::ptr::eq(params.as_ptr(), self.buffers.params.as_ptr());
        if !own {
            // The loop's turn has not started: the runner may write the evaluation buffer.
            self.buffers.eval.write(params);
        }
        self.load_into_loop(HostBuffers {
            params: own,
            ..HostBuffers::STATE
        })?;
        let request = Request::Evaluate { own };
        match self.call(request)? {
            Reply::Evaluation(e) => Ok(e),
            other => Err(self.unexpected(request, other)),
        }
    }

    fn steps_per_epoch(&self) -> Option<u64> {
        self.attach.steps_per_epoch
    }

    fn shared_state_len(&self) -> usize {
        self.buffers.state.len()
    }

    /// The runner holds the turn whenever it calls this (before an evaluation).
    fn read_shared_state(&mut self, out: &mut [f32]) {
        self.buffers.state.read(out);
    }

    fn write_shared_state(&mut self, state: &[f32]) {
        self.buffers.state.write(state);
    }

    fn shared_buffers(&self) -> Option<(Arc<SharedBuffer>, Arc<SharedBuffer>)> {
        Some((
            Arc::clone(&self.buffers.params),
            Arc::clone(&self.buffers.grad),
        ))
    }

    fn optimizer_step(&mut self, params: &mut [f32], grad: &[f32], lr: f32) -> Option<Result<()>> {
        self.attach.owns_optimizer.then(|| {
            self.ensure_shared("parameter", params.as_ptr(), &self.buffers.params)?;
            self.ensure_shared("gradient", grad.as_ptr(), &self.buffers.grad)?;
            self.load_into_loop(HostBuffers::PARAMS_AND_GRAD)?;
            self.call_done(Request::OptimizerStep { lr })?;
            self.loop_changed(HostBuffers::PARAMS);
            Ok(())
        })
    }

    fn host_access(&mut self, which: HostBuffers, access: Access) -> Result<()> {
        self.bring_across(which, Newest::Loop)?;
        if access == Access::Write {
            // The runner may change them: the loop's copies are stale from here.
            if let Some(m) = self.mirror.as_mut() {
                m.set(which, Newest::Host);
            }
        }
        Ok(())
    }

    fn clear_optimizer(&mut self) -> Result<()> {
        if !self.attach.owns_optimizer {
            return Ok(());
        }
        self.call_done(Request::ClearOptimizer)
    }

    /// The loop's own state, and how many gradients it computed (its next step's index).
    fn save_state(&mut self, state: &mut StateDict) -> Result<()> {
        // The loop saves the model state it goes on with: the workers' average where the
        // runner wrote one (at an evaluation another worker made) that the loop has not loaded.
        self.load_into_loop(HostBuffers::STATE)?;
        let request = Request::SaveState;
        match self.call(request)? {
            Reply::State(bytes) => state.put_bytes("loop", bytes),
            other => return Err(self.unexpected(request, other)),
        }
        state.put_u64("gradients", self.gradients);
        Ok(())
    }

    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.gradients = state.u64("gradients")?;
        self.slot.lock().to_load = Some(state.bytes("loop")?.to_vec());
        self.call_done(Request::LoadState)?;
        // A mirrored model's buffers (BatchNorm statistics) are the restored ones now.
        self.loop_changed(HostBuffers {
            state: !self.buffers.state.is_empty(),
            ..HostBuffers::NONE
        });
        Ok(())
    }
}

/// The outside loop's side of one worker.
#[derive(Clone)]
pub struct LoopHandle {
    slot: Arc<Slot>,
}

impl LoopHandle {
    pub fn rank(&self) -> usize {
        self.slot.rank
    }

    /// Gives the runner this worker's model and returns the buffers the loop's tensors are to
    /// view (the parameters already hold `attach.initial`). Once per worker.
    pub fn attach(&self, attach: Attach) -> Result<Buffers> {
        let len = attach.layout.len();
        if attach.initial.len() != len {
            return Err(Error::Config(format!(
                "the initial parameters hold {} values, the layout {len}",
                attach.initial.len()
            )));
        }
        if len == 0 {
            return Err(Error::Config("the model has no parameters".into()));
        }
        let mut state = self.slot.lock();
        if state.attached.is_some() {
            return Err(Error::Config(format!(
                "worker {}'s training loop attached a model already",
                self.slot.rank
            )));
        }
        if state.finished {
            return Err(Error::Config("the run is over".into()));
        }
        let buffers = Buffers {
            params: SharedBuffer::zeros(len),
            grad: SharedBuffer::zeros(len),
            eval: SharedBuffer::zeros(len),
            state: SharedBuffer::zeros(attach.state.len()),
        };
        // Nobody else has the buffers yet.
        buffers.params.write(&attach.initial);
        buffers.state.write(&attach.state);
        state.attached = Some((attach, buffers.clone()));
        self.slot.changed.notify_all();
        Ok(buffers)
    }

    /// Waits for the runner's next request, or the run's end.
    pub fn next(&self) -> Result<Next> {
        let mut state = self.slot.lock();
        if let Some(pending) = state.answering {
            return Err(Error::Config(format!(
                "answer the runner's {pending:?} before asking for the next request"
            )));
        }
        loop {
            if let Some(request) = state.request.take() {
                state.answering = Some(request);
                return Ok(Next::Request(request));
            }
            if state.finished {
                return Ok(Next::Finished);
            }
            state = self.slot.wait(state);
        }
    }

    /// The state to restore, while answering [`Request::LoadState`] (once).
    pub fn state_to_load(&self) -> Result<Vec<u8>> {
        let mut state = self.slot.lock();
        if state.answering != Some(Request::LoadState) {
            return Err(Error::Config(
                "there is a state to load only while answering the runner's LoadState".into(),
            ));
        }
        state
            .to_load
            .take()
            .ok_or_else(|| Error::Config("the state to load was taken already".into()))
    }

    /// Answers the request [`LoopHandle::next`] returned.
    pub fn reply(&self, reply: Reply) -> Result<()> {
        let mut state = self.slot.lock();
        let Some(request) = state.answering else {
            return Err(Error::Config("there is no request to answer".into()));
        };
        let fits = matches!(
            (request, &reply),
            (Request::Gradient { .. }, Reply::Loss(_))
                | (Request::OptimizerStep { .. }, Reply::Done)
                | (Request::ClearOptimizer, Reply::Done)
                | (Request::ToHost(_), Reply::Done)
                | (Request::FromHost(_), Reply::Done)
                | (Request::SaveState, Reply::State(_))
                | (Request::LoadState, Reply::Done)
                | (Request::Evaluate { .. }, Reply::Evaluation(_))
        );
        if !fits {
            return Err(Error::Config(format!(
                "{reply:?} does not answer the runner's {request:?}"
            )));
        }
        state.answering = None;
        state.reply = Some(reply);
        self.slot.changed.notify_all();
        Ok(())
    }

    /// The loop is done: it returned (`None`) or failed (`Some(message)`). A runner still
    /// waiting for it fails with that message; the loop may not attach or answer after this.
    pub fn leave(&self, failure: Option<String>) {
        let mut state = self.slot.lock();
        if state.left.is_none() {
            state.left = Some(failure);
        }
        state.answering = None;
        self.slot.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::{AlgorithmConfig, AllReduceConfig, LsgdConfig};
    use crate::optim::OptimizerConfig;
    use crate::runner::{run_threads, EvalModel, RunConfig, RunReport};

    const DIM: usize = 6;

    /// Worker r's objective ½‖x − c_r‖² with the gradient taken at a point perturbed by a
    /// fixed sequence, so that steps differ from worker to worker and from step to step.
    fn center(rank: usize) -> Vec<f32> {
        (0..DIM)
            .map(|i| (rank * DIM + i) as f32 * 0.25 - 1.0)
            .collect()
    }

    fn noise(rank: usize, index: u64, i: usize) -> f32 {
        ((rank as u64 * 31 + index * 7 + i as u64) % 11) as f32 * 0.01 - 0.05
    }

    fn loss_and_grad(rank: usize, index: u64, x: &[f32], g: &mut [f32]) -> f64 {
        let c = center(rank);
        let mut loss = 0.0f64;
        for i in 0..DIM {
            let d = x[i] - c[i] + noise(rank, index, i);
            g[i] = d;
            loss += 0.5 * f64::from(d) * f64::from(d);
        }
        loss
    }

    fn evaluation(x: &[f32]) -> Evaluation {
        Evaluation {
            loss: x.iter().map(|v| f64::from(*v).powi(2)).sum(),
            accuracy: None,
            grad_norm: None,
        }
    }

    /// The same problem as a learner in Rust.
    struct InRust {
        rank: usize,
        index: u64,
        layout: ParamLayout,
    }

    impl Learner for InRust {
        fn layout(&self) -> &ParamLayout {
            &self.layout
        }
        fn init_params(&mut self, params: &mut [f32]) {
            params.fill(0.5 + self.rank as f32);
        }
        fn loss_and_grad(&mut self, params: &[f32], grad: &mut [f32]) -> Result<f64> {
            let loss = loss_and_grad(self.rank, self.index, params, grad);
            self.index += 1;
            Ok(loss)
        }
        fn evaluate(&mut self, params: &[f32]) -> Result<Evaluation> {
            Ok(evaluation(params))
        }
    }

    fn layout() -> ParamLayout {
        ParamLayout::new().with("w", &[2, 3])
    }

    /// The test model with these initial values, no model state and no epoch length.
    fn attach(initial: Vec<f32>, owns_optimizer: bool) -> Attach {
        Attach {
            layout: layout(),
            initial,
            owns_optimizer,
            steps_per_epoch: None,
            state: Vec::new(),
            mirrored: false,
        }
    }

    /// How an outside loop keeps its model.
    #[derive(Clone, Copy, PartialEq)]
    enum Model {
        /// In the shared buffers.
        Shared,
        /// In memory of its own, which the shared buffers mirror (a GPU's, in real loops).
        Mirrored,
    }

    /// What an outside loop was asked: gradients, and copies of parameters and gradients each
    /// way (mirrored models).
    #[derive(Debug, Default, PartialEq)]
    struct Asked {
        gradients: u64,
        params_to_host: u64,
        params_from_host: u64,
        grads_to_host: u64,
        grads_from_host: u64,
    }

    /// An outside loop on its own thread: attaches, answers until the run is over, and steps
    /// plain SGD itself when it owns the optimizer. A mirrored model lives in `x` and `g`
    /// between the requests, and the shared buffers see it only through the copies asked for.
    fn outside_loop(handle: LoopHandle, owns_optimizer: bool, model: Model) -> Result<Asked> {
        let rank = handle.rank();
        let initial = vec![0.5 + rank as f32; DIM];
        let mirrored = model == Model::Mirrored;
        let buffers = handle.attach(Attach {
            mirrored,
            ..attach(initial.clone(), owns_optimizer)
        })?;
        let (mut x, mut g) = (initial, vec![0.0; DIM]);
        let mut asked = Asked::default();
        loop {
            let request = match handle.next()? {
                Next::Finished => return Ok(asked),
                Next::Request(r) => r,
            };
            if !mirrored {
                buffers.params.read(&mut x);
                buffers.grad.read(&mut g);
            }
            let reply = match request {
                Request::Gradient { index } => {
                    asked.gradients += 1;
                    let loss = loss_and_grad(rank, index, &x, &mut g);
                    Reply::Loss(loss)
                }
                Request::OptimizerStep { lr } => {
                    for (p, d) in x.iter_mut().zip(&g) {
                        *p -= lr * d;
                    }
                    Reply::Done
                }
                Request::ClearOptimizer => Reply::Done,
                Request::Evaluate { own } => {
                    let mut other = vec![0.0; DIM];
                    buffers.eval.read(&mut other);
                    Reply::Evaluation(evaluation(if own { &x } else { &other }))
                }
                Request::ToHost(which) => {
                    assert!(mirrored, "a copy asked of a model in the shared buffers");
                    if which.params {
                        asked.params_to_host += 1;
                        buffers.params.write(&x);
                    }
                    if which.grad {
                        asked.grads_to_host += 1;
                        buffers.grad.write(&g);
                    }
                    Reply::Done
                }
                Request::FromHost(which) => {
                    assert!(mirrored, "a copy asked of a model in the shared buffers");
                    if which.params {
                        asked.params_from_host += 1;
                        buffers.params.read(&mut x);
                    }
                    if which.grad {
                        asked.grads_from_host += 1;
                        buffers.grad.read(&mut g);
                    }
                    Reply::Done
                }
                // Nothing of its own: the request index says where its data is.
                Request::SaveState => Reply::State(Vec::new()),
                Request::LoadState => Reply::Done,
            };
            if !mirrored {
                buffers.params.write(&x);
                buffers.grad.write(&g);
            }
            handle.reply(reply)?;
        }
    }

    fn config(algorithm: AlgorithmConfig) -> RunConfig {
        RunConfig {
            workers: 3,
            steps: Some(40),
            log_every: 10,
            eval_every: 20,
            sync_init: false,
            algorithm,
            optimizer: OptimizerConfig {
                lr: 0.1,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn run_outside(config: &RunConfig, owns_optimizer: bool) -> Result<RunReport> {
        run_loops(config, owns_optimizer, Model::Shared).map(|(report, _)| report)
    }

    /// The run, and what each worker's loop was asked.
    fn run_loops(
        config: &RunConfig,
        owns_optimizer: bool,
        model: Model,
    ) -> Result<(RunReport, Vec<Asked>)> {
        let loops = ExternalLoops::new(0..config.workers);
        std::thread::scope(|s| {
            let threads: Vec<_> = loops
                .ranks()
                .map(|r| {
                    let handle = loops.handle(r).unwrap();
                    s.spawn(move || outside_loop(handle, owns_optimizer, model))
                })
                .collect();
            let report = run_threads(config, &loops, &mut |_| {});
            loops.close();
            let mut asked = Vec::new();
            for t in threads {
                asked.push(t.join().unwrap()?);
            }
            Ok((report?, asked))
        })
    }

    fn run_in_rust(config: &RunConfig) -> RunReport {
        let factory = |ctx: LearnerContext| -> Result<Box<dyn Learner>> {
            Ok(Box::new(InRust {
                rank: ctx.rank,
                index: 0,
                layout: layout(),
            }))
        };
        run_threads(config, &factory, &mut |_| {}).unwrap()
    }

    fn params(report: &RunReport) -> Vec<Vec<f32>> {
        report.workers.iter().map(|w| w.params.clone()).collect()
    }

    #[test]
    fn an_outside_loop_gives_the_same_run_as_a_learner_in_rust() {
        for algorithm in [
            AlgorithmConfig::new(LsgdConfig::default()),
            AlgorithmConfig::new(AllReduceConfig::default()),
        ] {
            let config = config(algorithm);
            let inside = run_in_rust(&config);
            // peloton's optimizer, and the loop's own plain SGD, which is the same update.
            for owns in [false, true] {
                let outside = run_outside(&config, owns).unwrap();
                assert_eq!(params(&outside), params(&inside), "owns_optimizer = {owns}");
                assert_eq!(outside.workers[1].losses, inside.workers[1].losses);
                assert_eq!(evals(&outside), evals(&inside));
            }
        }
    }

    /// The final evaluations without their wall-clock seconds.
    fn evals(report: &RunReport) -> Vec<(u64, Evaluation)> {
        report
            .final_evals
            .iter()
            .map(|e| (e.step, e.eval.clone()))
            .collect()
    }

    #[test]
    fn a_mirrored_model_gives_the_same_run_as_a_learner_in_rust() {
        for algorithm in [
            AlgorithmConfig::new(LsgdConfig::default()),
            AlgorithmConfig::new(AllReduceConfig::default()),
            AlgorithmConfig::new(crate::algorithms::EasgdConfig::default()),
            AlgorithmConfig::new(crate::algorithms::LocalSgdConfig::default()),
            AlgorithmConfig::new(crate::algorithms::SgpConfig::default()),
            AlgorithmConfig::new(crate::algorithms::DpsgdConfig::default()),
        ] {
            for eval_model in [EvalModel::Average, EvalModel::Workers] {
                let name = format!("{algorithm:?}, {eval_model:?}");
                let config = RunConfig {
                    eval_model,
                    ..config(algorithm.clone())
                };
                let inside = run_in_rust(&config);
                for owns in [false, true] {
                    let (outside, _) = run_loops(&config, owns, Model::Mirrored).unwrap();
                    assert_eq!(params(&outside), params(&inside), "{name}, owns {owns}");
                    assert_eq!(
                        outside.workers[2].losses, inside.workers[2].losses,
                        "{name}"
                    );
                    assert_eq!(evals(&outside), evals(&inside), "{name}");
                }
            }
        }
    }

    /// A mirrored model is copied where the algorithm communicates, not every step. 40 steps,
    /// log points every 10 steps with the consensus distance (which reads the model),
    /// evaluations of each worker's own model at steps 20 and 40 (their drains make the host
    /// buffer the newest), no parameters in the records (6 > RECORD_PARAMS_MAX).
    #[test]
    fn a_mirrored_model_is_copied_only_where_the_algorithm_communicates() {
        let asked = |algorithm| {
            let config = RunConfig {
                eval_model: EvalModel::Workers,
                consensus: true,
                ..config(algorithm)
            };
            let (_, asked) = run_loops(&config, true, Model::Mirrored).unwrap();
            asked
        };
        // LSGD, τ = 4: the 10 rounds (steps 3, 7, …, 39) copy the model out and back in; the
        // consensus distance at steps 10 and 30 reads it (out); one more load of the broadcast
        // initial model. The log points at 20 and 40 follow rounds: the host holds the newest
        // model there.
        let lsgd = Asked {
            gradients: 40,
            params_to_host: 10 + 2,
            params_from_host: 11,
            grads_to_host: 0,
            grads_from_host: 0,
        };
        for worker in asked(AlgorithmConfig::new(LsgdConfig::default())) {
            assert_eq!(worker, lsgd);
        }
        // All-reduce SGD: the gradient out and back every step; the model only for the four log
        // points (out; the drains before the evaluations at 20 and 40 write, so it goes back
        // in for them) and the initial model (in).
        let all_reduce = Asked {
            gradients: 40,
            params_to_host: 4,
            params_from_host: 3,
            grads_to_host: 40,
            grads_from_host: 40,
        };
        for worker in asked(AlgorithmConfig::new(AllReduceConfig::default())) {
            assert_eq!(worker, all_reduce);
        }
    }

    /// A loop with state of its own: heavy-ball momentum and its own count of the batches it
    /// drew (its data position), saved as bytes at checkpoints and restored on a resume unless
    /// `forgetful`.
    fn stateful_loop(handle: LoopHandle, forgetful: bool) -> Result<()> {
        let rank = handle.rank();
        let buffers = handle.attach(attach(vec![0.5 + rank as f32; DIM], true))?;
        let (mut x, mut g, mut v) = (vec![0.0; DIM], vec![0.0; DIM], vec![0.0f32; DIM]);
        let mut batches = 0u64;
        while let Next::Request(request) = handle.next()? {
            let reply = match request {
                Request::Gradient { .. } => {
                    buffers.params.read(&mut x);
                    let loss = loss_and_grad(rank, batches, &x, &mut g);
                    batches += 1;
                    buffers.grad.write(&g);
                    Reply::Loss(loss)
                }
                Request::OptimizerStep { lr } => {
                    buffers.params.read(&mut x);
                    for ((p, d), m) in x.iter_mut().zip(&g).zip(v.iter_mut()) {
                        *m = 0.9 * *m + d;
                        *p -= lr * *m;
                    }
                    buffers.params.write(&x);
                    Reply::Done
                }
                Request::Evaluate { .. } => {
                    buffers.params.read(&mut x);
                    Reply::Evaluation(evaluation(&x))
                }
                Request::SaveState => {
                    let mut bytes = batches.to_le_bytes().to_vec();
                    bytes.extend(v.iter().flat_map(|m| m.to_le_bytes()));
                    Reply::State(bytes)
                }
                Request::LoadState => {
                    let bytes = handle.state_to_load()?;
                    if !forgetful {
                        batches = u64::from_le_bytes(bytes[..8].try_into().unwrap());
                        for (m, b) in v.iter_mut().zip(bytes[8..].chunks(4)) {
                            *m = f32::from_le_bytes(b.try_into().unwrap());
                        }
                    }
                    Reply::Done
                }
                _ => Reply::Done,
            };
            handle.reply(reply)?;
        }
        Ok(())
    }

    fn run_stateful(config: &RunConfig, forgetful: bool) -> RunReport {
        let loops = ExternalLoops::new(0..config.workers);
        std::thread::scope(|s| {
            for r in loops.ranks() {
                let handle = loops.handle(r).unwrap();
                s.spawn(move || stateful_loop(handle, forgetful).unwrap());
            }
            let report = run_threads(config, &loops, &mut |_| {});
            loops.close();
            report.unwrap()
        })
    }

    /// A run resumed from its checkpoint of step 20 ends as the uninterrupted one, bit for bit,
    /// because the loop's momentum and data position come back with the runner's state; a
    /// loop that does not restore them ends elsewhere.
    #[test]
    fn a_loop_s_own_state_comes_back_with_a_resume() {
        let dir =
            std::env::temp_dir().join(format!("peloton-external-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = config(AlgorithmConfig::new(LsgdConfig::default()));
        config.checkpoint = Some(crate::checkpoint::CheckpointConfig {
            every: 10,
            dir: dir.clone(),
            fingerprint: 7,
            resume: None,
        });
        let whole = run_stateful(&config, false);
        if let Some(c) = config.checkpoint.as_mut() {
            c.resume = Some(20);
        }
        let resumed = run_stateful(&config, false);
        assert_eq!(params(&resumed), params(&whole));
        assert_eq!(evals(&resumed), evals(&whole));
        let forgot = run_stateful(&config, true);
        assert_ne!(params(&forgot), params(&whole));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_asynchronous_run_evaluates_its_final_model_through_worker_0s_loop() {
        let mut config = config(AlgorithmConfig::new(
            crate::algorithms::AsyncEasgdConfig::default(),
        ));
        config.eval_every = 0;
        let report = run_outside(&config, false).unwrap();
        assert_eq!(report.final_evals.len(), 1);
        assert!(report.final_evals[0].eval.loss.is_finite());
    }

    #[test]
    fn the_loops_model_state_is_averaged_before_evaluations() {
        let config = config(AlgorithmConfig::new(LsgdConfig::default()));
        let loops = ExternalLoops::new(0..3);
        let states = std::thread::scope(|s| {
            let threads: Vec<_> = (0..3)
                .map(|r| {
                    let handle = loops.handle(r).unwrap();
                    s.spawn(move || {
                        let buffers = handle
                            .attach(Attach {
                                // Worker r's BatchNorm statistics: r, 10r.
                                state: vec![r as f32, 10.0 * r as f32],
                                ..attach(vec![0.0; DIM], false)
                            })
                            .unwrap();
                        while let Next::Request(request) = handle.next().unwrap() {
                            let reply = match request {
                                Request::Gradient { .. } => Reply::Loss(0.0),
                                Request::Evaluate { .. } => Reply::Evaluation(evaluation(&[])),
                                _ => Reply::Done,
                            };
                            handle.reply(reply).unwrap();
                        }
                        buffers.state.to_vec()
                    })
                })
                .collect();
            run_threads(&config, &loops, &mut |_| {}).unwrap();
            loops.close();
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        });
        // Every worker holds the average (0 + 1 + 2) / 3 = 1 and (0 + 10 + 20) / 3 = 10.
        for state in states {
            assert_eq!(state, vec![1.0, 10.0]);
        }
    }

    /// The error of an LSGD run on 3 workers whose worker `odd` runs `odd_loop` while the
    /// others run [`outside_loop`].
    fn run_with_one_odd_loop(odd: usize, odd_loop: impl Fn(LoopHandle) + Sync) -> Error {
        let config = config(AlgorithmConfig::new(LsgdConfig::default()));
        let loops = ExternalLoops::new(0..3);
        std::thread::scope(|s| {
            for r in 0..3 {
                let handle = loops.handle(r).unwrap();
                let odd_loop = &odd_loop;
                s.spawn(move || {
                    if r == odd {
                        odd_loop(handle);
                    } else {
                        let _ = outside_loop(handle, false, Model::Shared);
                    }
                });
            }
            let result = run_threads(&config, &loops, &mut |_| {});
            loops.close();
            result.unwrap_err()
        })
    }

    #[test]
    fn a_loop_that_fails_ends_the_run_with_its_message() {
        let err = run_with_one_odd_loop(2, |handle| {
            handle.leave(Some("CUDA out of memory".into()));
        });
        let message = err.to_string();
        assert!(message.contains("CUDA out of memory"), "{message}");
        assert!(message.contains("worker 2"), "{message}");
    }

    #[test]
    fn a_loop_that_returns_early_is_named() {
        let err = run_with_one_odd_loop(1, |handle| {
            let buffers = handle.attach(attach(vec![0.0; DIM], false)).unwrap();
            // Answers five gradients, then returns.
            for _ in 0..5 {
                let Next::Request(Request::Gradient { .. }) = handle.next().unwrap() else {
                    panic!("a gradient request first")
                };
                buffers.grad.write(&[0.0; DIM]);
                handle.reply(Reply::Loss(1.0)).unwrap();
            }
            handle.leave(None);
        });
        let message = err.to_string();
        assert!(
            message.contains("worker 1") && message.contains("returned before the run's end"),
            "{message}"
        );
    }

    #[test]
    fn the_handle_refuses_what_does_not_fit() {
        let loops = ExternalLoops::new(0..1);
        let handle = loops.handle(0).unwrap();
        assert!(loops.handle(1).is_none());
        let bad = handle.attach(attach(vec![0.0; 2], false));
        assert!(bad.err().unwrap().to_string().contains("hold 2 values"));
        assert!(handle.reply(Reply::Done).is_err(), "nothing asked yet");
        let good = attach(vec![0.0; DIM], false);
        handle.attach(good.clone()).unwrap();
        assert!(handle.attach(good).is_err(), "a second model");
        loops.close();
        assert_eq!(handle.next().unwrap(), Next::Finished);
    }
}
