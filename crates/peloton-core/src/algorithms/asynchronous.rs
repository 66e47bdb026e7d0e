//! The scheduling of asynchronous algorithms (ALGORITHMS.md §1.2, §1.3, §9.2): who does the
//! next unit of work, decided by a global work counter instead of per-worker step counts.
//!
//! Before every unit of work a worker takes a *ticket*: an atomic fetch-and-add on the shared
//! counter [`WORK`]. Tickets are numbered 0, 1, 2, … in the order workers asked, whatever
//! their speed, so fast workers take more of them. A ticket is one of
//!
//! * a **local step** — global step `s`, the learning-rate schedule follows global progress
//!   `s / N` (§9.2), not the worker's own count;
//! * a **round** — for algorithms with collective rounds (asynchronous LSGD): after every
//!   `R = N·τ` step tickets come `N` round tickets. A worker holding a round ticket blocks in
//!   the round's collective until all `N` have arrived, so it cannot take a second one: the
//!   `N` round tickets go to `N` distinct workers, exactly the reference code's global server
//!   ("answer 0 until N·τ requests, then answer 1 to the next N");
//! * **stop** — the work budget is spent or a stop was requested.
//!
//! The total budget is `N × steps`; with rounds it is rounded up to whole rounds (`R` steps)
//! so that every started round completes. A time budget sets the shared counter [`STOP`] to
//! "stop from round r_now + 2" with [`CounterOp::SetMin`]: round r_now + 1 cannot complete
//! without the worker that sets it, so no ticket of round r_now + 2 exists yet and every
//! worker agrees on where the run ends (no worker can be left waiting inside a round).

use crate::checkpoint::StateDict;
use crate::transport::{Communicator, CounterOp};
use crate::{Error, Result};

/// The shared counter of tickets handed out.
pub const WORK: usize = 0;
/// The shared counter of stop requests: 0 = none, otherwise (first round that stops) + 1.
pub const STOP: usize = 1;
/// The shared counter of workers that finished their loop.
pub const DONE: usize = 2;

/// What a ticket asks the worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Take local step number `global` of the whole run.
    Step { global: u64 },
    /// Take part in collective round `index`.
    Round { index: u64 },
    /// Leave the loop.
    Stop,
}

/// How tickets are interpreted for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketPlan {
    pub workers: u64,
    /// Step tickets between two rounds (`N·τ`), for algorithms with rounds.
    pub round_steps: Option<u64>,
    /// Total local steps of the run (`N × steps`), when the run has a step budget.
    pub budget: Option<u64>,
}

impl TicketPlan {
    /// Tickets per cycle (steps, then round tickets).
    fn cycle(&self, round_steps: u64) -> u64 {
        round_steps + self.workers
    }

    /// The round a ticket belongs to (0 without rounds).
    pub fn round_of(&self, ticket: u64) -> u64 {
        self.round_steps.map_or(0, |r| ticket / self.cycle(r))
    }

    /// What ticket `ticket` means, given the value of the [`STOP`] counter read after it.
    pub fn decide(&self, ticket: u64, stop: u64) -> Ticket {
        match self.round_steps {
            None => {
                if stop != 0 || self.budget.is_some_and(|b| ticket >= b) {
                    Ticket::Stop
                } else {
                    Ticket::Step { global: ticket }
                }
            }
            Some(r) => {
                let round = ticket / self.cycle(r);
                let pos = ticket % self.cycle(r);
                let last_round = self.budget.map(|b| b.div_ceil(r));
                if last_round.is_some_and(|last| round >= last) || (stop != 0 && round + 1 >= stop)
                {
                    Ticket::Stop
                } else if pos < r {
                    Ticket::Step {
                        global: round * r + pos,
                    }
                } else {
                    Ticket::Round { index: round }
                }
            }
        }
    }

    /// The [`STOP`] value a worker holding `ticket` writes when its time budget is spent.
    pub fn stop_request(&self, ticket: u64) -> u64 {
        match self.round_steps {
            None => 1,
            // Stop from round r + 2, stored as (r + 2) + 1 (0 means "no request").
            Some(_) => self.round_of(ticket) + 3,
        }
    }

    /// Takes the next ticket: its number and what it means. `out_of_time` asks for the run to
    /// stop (see the module docs).
    pub fn next(&self, comm: &mut dyn Communicator, out_of_time: bool) -> Result<(u64, Ticket)> {
        let ticket = comm.counter(WORK, CounterOp::Add(1))?;
        if out_of_time {
            comm.counter(STOP, CounterOp::SetMin(self.stop_request(ticket)))?;
        }
        let stop = comm.counter(STOP, CounterOp::Get)?;
        Ok((ticket, self.decide(ticket, stop)))
    }
}

/// Staleness of the models a worker pulls or averages with, in the receiver's own steps
/// (ALGORITHMS.md §3.6, §5.3): accumulated between two log records.
#[derive(Debug, Clone, Default)]
pub struct Staleness {
    sum: f64,
    count: u64,
    max: u64,
}

impl Staleness {
    pub fn save_state(&self) -> StateDict {
        let mut s = StateDict::new();
        s.put_f64("sum", self.sum);
        s.put_u64s("count_max", &[self.count, self.max]);
        s
    }

    pub fn load_state(&mut self, s: &StateDict) -> Result<()> {
        let &[count, max] = s.u64s("count_max")? else {
            return Err(Error::Checkpoint(
                "staleness: count_max must be two numbers".into(),
            ));
        };
        *self = Self {
            sum: s.f64("sum")?,
            count,
            max,
        };
        Ok(())
    }

    pub fn record(&mut self, steps: u64) {
        self.sum += steps as f64;
        self.count += 1;
        self.max = self.max.max(steps);
    }

    /// (mean, max) since the previous call, `None` when nothing was received.
    pub fn take(&mut self) -> Option<(f64, u64)> {
        let out = (self.count > 0).then(|| (self.sum / self.count as f64, self.max));
        *self = Self::default();
        out
    }
}

/// Stores an f64 bit-exactly in two f32 slots (copies preserve every bit pattern), so a
/// scalar can travel inside an f32 message (push-sum weights, send times).
pub fn encode_f64(value: f64, slots: &mut [f32]) {
    let bits = value.to_bits();
    slots[0] = f32::from_bits((bits >> 32) as u32);
    slots[1] = f32::from_bits(bits as u32);
}

/// The f64 stored by [`encode_f64`].
pub fn decode_f64(slots: &[f32]) -> f64 {
    f64::from_bits(((slots[0].to_bits() as u64) << 32) | slots[1].to_bits() as u64)
}

/// Seconds on the run's clock: virtual time on the simulator, otherwise wall-clock time since
/// a process-wide epoch (so that timestamps of different worker threads compare).
pub fn clock(comm: &dyn Communicator) -> f64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    comm.now().unwrap_or_else(|| {
        EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs_f64()
    })
}

/// A worker's recent (time, steps done) history, to express a timestamp in its own steps.
#[derive(Debug, Clone, Default)]
pub struct StepClock {
    marks: std::collections::VecDeque<(f64, u64)>,
}

impl StepClock {
    /// Enough history for any realistic staleness; older timestamps count from the oldest.
    const KEEP: usize = 4096;

    pub fn save_state(&self) -> StateDict {
        let mut s = StateDict::new();
        s.put_f64s("times", &self.marks.iter().map(|m| m.0).collect::<Vec<_>>());
        s.put_u64s("steps", &self.marks.iter().map(|m| m.1).collect::<Vec<_>>());
        s
    }

    pub fn load_state(&mut self, s: &StateDict) -> Result<()> {
        let (times, steps) = (s.f64s("times")?, s.u64s("steps")?);
        if times.len() != steps.len() || times.len() > Self::KEEP {
            return Err(Error::Checkpoint(
                "step clock: times and steps differ in length".into(),
            ));
        }
        self.marks = times.iter().copied().zip(steps.iter().copied()).collect();
        Ok(())
    }

    /// At time `time` the worker had done `steps` steps.
    pub fn record(&mut self, time: f64, steps: u64) {
        if self.marks.len() == Self::KEEP {
            self.marks.pop_front();
        }
        self.marks.push_back((time, steps));
    }

    /// Steps done at the latest mark.
    pub fn steps(&self) -> u64 {
        self.marks.back().map_or(0, |m| m.1)
    }

    /// Steps done at time `time` (the latest mark not after it).
    pub fn steps_at(&self, time: f64) -> u64 {
        let i = self.marks.partition_point(|m| m.0 <= time);
        match i {
            0 => self.marks.front().map_or(0, |m| m.1),
            i => self.marks[i - 1].1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_rounds_tickets_are_global_steps_until_the_budget() {
        let plan = TicketPlan {
            workers: 3,
            round_steps: None,
            budget: Some(5),
        };
        assert_eq!(plan.decide(0, 0), Ticket::Step { global: 0 });
        assert_eq!(plan.decide(4, 0), Ticket::Step { global: 4 });
        assert_eq!(plan.decide(5, 0), Ticket::Stop);
        assert_eq!(plan.decide(1, plan.stop_request(1)), Ticket::Stop);
    }

    #[test]
    fn rounds_follow_every_n_tau_steps_and_the_budget_rounds_up() {
        // N = 2, τ = 2: cycle = 4 step tickets + 2 round tickets.
        let plan = TicketPlan {
            workers: 2,
            round_steps: Some(4),
            budget: Some(6),
        };
        let got: Vec<Ticket> = (0..14).map(|k| plan.decide(k, 0)).collect();
        use Ticket::*;
        assert_eq!(
            got,
            vec![
                Step { global: 0 },
                Step { global: 1 },
                Step { global: 2 },
                Step { global: 3 },
                Round { index: 0 },
                Round { index: 0 },
                // budget 6 → 2 whole rounds (8 steps)
                Step { global: 4 },
                Step { global: 5 },
                Step { global: 6 },
                Step { global: 7 },
                Round { index: 1 },
                Round { index: 1 },
                Stop,
                Stop,
            ]
        );
    }

    #[test]
    fn a_stop_request_lets_the_next_round_complete() {
        let plan = TicketPlan {
            workers: 2,
            round_steps: Some(4),
            budget: None,
        };
        // A worker holding ticket 1 (round 0) runs out of time: rounds 0 and 1 complete.
        let stop = plan.stop_request(1);
        assert!(matches!(plan.decide(5, stop), Ticket::Round { index: 0 }));
        assert!(matches!(plan.decide(11, stop), Ticket::Round { index: 1 }));
        assert_eq!(plan.decide(12, stop), Ticket::Stop);
    }

    #[test]
    fn step_clock_maps_times_to_steps() {
        let mut c = StepClock::default();
        c.record(1.0, 0);
        c.record(2.0, 1);
        c.record(3.5, 2);
        assert_eq!(c.steps(), 2);
        assert_eq!(c.steps_at(2.5), 1);
        assert_eq!(c.steps_at(3.5), 2);
        assert_eq!(c.steps_at(0.1), 0);
        let mut slots = [0.0f32; 2];
        for v in [0.1f64, -3.25e-300, f64::MAX, 1.0 / 3.0] {
            encode_f64(v, &mut slots);
            assert_eq!(decode_f64(&slots).to_bits(), v.to_bits());
        }
    }

    #[test]
    fn staleness_window_resets() {
        let mut s = Staleness::default();
        assert_eq!(s.take(), None);
        s.record(2);
        s.record(4);
        assert_eq!(s.take(), Some((3.0, 4)));
        assert_eq!(s.take(), None);
    }
}
