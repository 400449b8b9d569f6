//! What the status page shows that the state does not keep: when the process started, its
//! listeners, the last hour in samples, and the last reloads. Bounded whatever the uptime: a
//! ring of one sample every 10 s for an hour (360 × 20 bytes), beside it the WebSocket
//! closes of each interval by side and code (only those that happened: at most 54 pairs
//! each), the last 10 reloads. One background task fills it; nothing else runs for the page
//! while nobody looks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use crate::lifecycle::Event;
use crate::metrics::websockets::{CODES, Direction, Ender};
use crate::state::State;

/// One sample every this long.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: an hour's.
const SAMPLES: usize = 360;
/// Reloads kept.
const RELOADS: usize = 10;

pub struct Board {
    pub started: Instant,
    pub started_at: SystemTime,
    /// What each listener serves (`tls`, `redirect`, `admin`) and its address.
    pub listeners: Vec<(&'static str, SocketAddr)>,
    history: Mutex<History>,
    reloads: Mutex<VecDeque<Reload>>,
}

/// One sample: gauges as they were, counters as rates over the interval before it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub connections: u32,
    pub websockets: u32,
    pub handshakes_per_second: f32,
    pub bytes_per_second: f32,
    /// WebSocket messages, both ways.
    pub messages_per_second: f32,
}

#[derive(Debug, Clone)]
pub struct Reload {
    pub at: SystemTime,
    pub trigger: &'static str,
    /// `Err`: why it failed (the file and the reason).
    pub result: Result<(), String>,
}

#[derive(Debug, Default)]
struct History {
    samples: VecDeque<Sample>,
    /// Beside each sample: the WebSocket closes in its interval, (side, code, count).
    closes: VecDeque<Vec<(Ender, &'static str, u64)>>,
    /// Counter totals at the last sample, for the next one's rates.
    last: Option<Totals>,
}

/// The counters a sample takes the difference of.
#[derive(Debug, Clone)]
struct Totals {
    at: Instant,
    handshakes: u64,
    bytes: u64,
    messages: u64,
    /// WebSocket closes by side and code, summed over the routes.
    closes: [[u64; CODES.len()]; 3],
}

impl Totals {
    fn now(state: &State) -> Totals {
        let (up, down) = state.metrics.traffic.bytes();
        let mut totals = Totals {
            at: Instant::now(),
            handshakes: state.metrics.handshakes_total(),
            bytes: up + down,
            messages: 0,
            closes: [[0; CODES.len()]; 3],
        };
        let config = state.serving.load();
        for pool in config.pools.iter() {
            let ws = &pool.websockets;
            totals.messages += Direction::ALL.iter().map(|&d| ws.messages(d)).sum::<u64>();
            for (ender, code, count) in ws.closes() {
                let at = CODES.iter().position(|c| *c == code).unwrap_or(0);
                totals.closes[ender as usize][at] += count;
            }
        }
        totals
    }
}

impl Board {
    pub fn new(listeners: Vec<(&'static str, SocketAddr)>) -> Board {
        Board {
            started: Instant::now(),
            started_at: SystemTime::now(),
            listeners,
            history: Mutex::default(),
            reloads: Mutex::default(),
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.samples.iter().copied().collect()
    }

    /// The WebSocket closes of the last hour (of the samples kept) and since the last
    /// sample, by side and code, most first. `now` is every route's count so far.
    pub fn closes(&self, now: &[(Ender, &'static str, u64)]) -> Vec<(Ender, &'static str, u64)> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let mut sums: Vec<(Ender, &'static str, u64)> = Vec::new();
        let mut add = |ender: Ender, code: &'static str, count: u64| match sums
            .iter_mut()
            .find(|(e, c, _)| *e == ender && *c == code)
        {
            Some(sum) => sum.2 += count,
            None if count > 0 => sums.push((ender, code, count)),
            None => {}
        };
        for (ender, code, count) in history.closes.iter().flatten() {
            add(*ender, code, *count);
        }
        // Since the last sample: what the counts say now beyond what it saw.
        if let Some(last) = &history.last {
            let mut totals = [[0u64; CODES.len()]; 3];
            for (ender, code, count) in now {
                let at = CODES.iter().position(|c| c == code).unwrap_or(0);
                totals[*ender as usize][at] += count;
            }
            for ender in Ender::ALL {
                for (i, code) in CODES.iter().enumerate() {
                    let seen = last.closes[ender as usize][i];
                    add(ender, code, totals[ender as usize][i].saturating_sub(seen));
                }
            }
        }
        sums.sort_by_key(|s| std::cmp::Reverse(s.2));
        sums
    }

    /// The last reloads, newest first.
    pub fn reloads(&self) -> Vec<Reload> {
        let reloads = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        reloads.iter().rev().cloned().collect()
    }

    /// Takes a sample of `state` now.
    pub fn sample(&self, state: &State) {
        let now = Totals::now(state);
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        // A route removed by a reload takes its counts along: a total may go down, and that
        // interval counts nothing rather than something negative.
        let rate = |new: u64, old: u64, secs: f32| new.saturating_sub(old) as f32 / secs;
        let (mut sample, mut closes) = (Sample::default(), Vec::new());
        if let Some(last) = &history.last {
            let secs = now.at.duration_since(last.at).as_secs_f32().max(0.001);
            sample.handshakes_per_second = rate(now.handshakes, last.handshakes, secs);
            sample.bytes_per_second = rate(now.bytes, last.bytes, secs);
            sample.messages_per_second = rate(now.messages, last.messages, secs);
            for ender in Ender::ALL {
                let (new, old) = (&now.closes[ender as usize], &last.closes[ender as usize]);
                for (i, code) in CODES.iter().enumerate() {
                    let n = new[i].saturating_sub(old[i]);
                    if n > 0 {
                        closes.push((ender, *code, n));
                    }
                }
            }
        }
        sample.connections = u32::try_from(state.metrics.connections_now()).unwrap_or(0);
        sample.websockets = u32::try_from(state.metrics.traffic.websockets()).unwrap_or(0);
        history.last = Some(now);
        if history.samples.len() == SAMPLES {
            history.samples.pop_front();
            history.closes.pop_front();
        }
        history.samples.push_back(sample);
        history.closes.push_back(closes);
    }

    fn reloaded(&self, trigger: &'static str, result: Result<(), String>) {
        let mut reloads = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        if reloads.len() == RELOADS {
            reloads.pop_front();
        }
        reloads.push_back(Reload {
            at: SystemTime::now(),
            trigger,
            result,
        });
    }

    /// Fills the board until `until`: a sample every [`SAMPLE_EVERY`] (the first at once),
    /// and each reload the lifecycle reports.
    pub async fn record(
        &self,
        state: &State,
        mut events: Receiver<Event>,
        until: impl std::future::Future<Output = ()>,
    ) {
        let mut until = std::pin::pin!(until);
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trigger = "call";
        loop {
            tokio::select! {
                _ = &mut until => return,
                _ = ticks.tick() => self.sample(state),
                event = events.recv() => match event {
                    Ok(Event::Reloading { why }) => trigger = why,
                    Ok(Event::Reloaded { result }) => self.reloaded(trigger, result),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_holds_an_hour_whatever_the_uptime() {
        let board = Board::new(Vec::new());
        {
            let mut history = board.history.lock().unwrap();
            for i in 0..(SAMPLES + 50) {
                if history.samples.len() == SAMPLES {
                    history.samples.pop_front();
                }
                history.samples.push_back(Sample {
                    connections: i as u32,
                    ..Sample::default()
                });
            }
        }
        let samples = board.samples();
        assert_eq!(samples.len(), SAMPLES);
        assert_eq!(samples[0].connections, 50);
        assert!(std::mem::size_of::<Sample>() * SAMPLES <= 8 * 1024);
        for i in 0..(RELOADS + 3) {
            board.reloaded("poll", Err(format!("bad {i}")));
        }
        let reloads = board.reloads();
        assert_eq!(reloads.len(), RELOADS);
        assert_eq!(reloads[0].result, Err(format!("bad {}", RELOADS + 2)));
    }
}
