//! What the status page shows that the state does not keep: when the process started, its
//! listeners, the last hour in samples, and the last reloads. Fixed in size whatever the
//! uptime: a ring of one sample every 10 s for an hour (360 × 16 bytes), the last 10
//! reloads. One background task fills it; nothing else runs for the page while nobody
//! looks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use crate::lifecycle::Event;
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
    /// Counter totals at the last sample, for the next one's rates.
    last: Option<(Instant, u64, u64)>,
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

    /// The last reloads, newest first.
    pub fn reloads(&self) -> Vec<Reload> {
        let reloads = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        reloads.iter().rev().cloned().collect()
    }

    /// Takes a sample of `state` now.
    pub fn sample(&self, state: &State) {
        let traffic = &state.metrics.traffic;
        let (up, down) = traffic.bytes();
        let (handshakes, bytes, now) =
            (state.metrics.handshakes_total(), up + down, Instant::now());
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let (handshakes_per_second, bytes_per_second) = match history.last {
            Some((at, h, b)) => {
                let secs = now.duration_since(at).as_secs_f32().max(0.001);
                (
                    handshakes.saturating_sub(h) as f32 / secs,
                    bytes.saturating_sub(b) as f32 / secs,
                )
            }
            None => (0.0, 0.0),
        };
        history.last = Some((now, handshakes, bytes));
        if history.samples.len() == SAMPLES {
            history.samples.pop_front();
        }
        history.samples.push_back(Sample {
            connections: u32::try_from(state.metrics.connections_now()).unwrap_or(0),
            websockets: u32::try_from(traffic.websockets()).unwrap_or(0),
            handshakes_per_second,
            bytes_per_second,
        });
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
        assert!(std::mem::size_of::<Sample>() * SAMPLES <= 6 * 1024);
        for i in 0..(RELOADS + 3) {
            board.reloaded("poll", Err(format!("bad {i}")));
        }
        let reloads = board.reloads();
        assert_eq!(reloads.len(), RELOADS);
        assert_eq!(reloads[0].result, Err(format!("bad {}", RELOADS + 2)));
    }
}
