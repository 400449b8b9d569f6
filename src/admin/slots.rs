//! Who may hold the admin port's few connections, so a probe from an honest client is
//! answered while slow clients try to hold them all (Slowloris against `/livez`, which our own
//! Kubernetes manifest points liveness at: a failed probe restarts the pod).
//!
//! Three rules, each cheap:
//! - each connection has [`HEAD_TIME`] for its request head, whatever `--header-timeout` says
//!   (a probe sends its head in one write; 0 does not turn this off);
//! - one address (an IPv6 /64, which one host usually holds whole) holds at most
//!   [`PER_ADDRESS`] connections: one attacker cannot take them all;
//! - when all [`CONNECTIONS`] are held, a new connection takes the place of the **oldest one
//!   still waiting for its head**, which is closed: a probe's head arrives in its first
//!   moments, so it is never the oldest incomplete one for long, while trickled heads age.
//!   When every held connection has its head (answers being written, perhaps to clients that
//!   do not read them), the oldest of all gives way: a probe's answer is written in a moment.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// Admin connections held at once.
pub const CONNECTIONS: usize = 64;
/// Connections one address may hold: a Prometheus, a kubelet and a person, several times over.
pub const PER_ADDRESS: usize = 8;
/// Time for an admin request head: probes send theirs at once (kubelet's probe timeout is 1 s).
pub const HEAD_TIME: Duration = Duration::from_secs(2);

/// The admin port's connections, oldest first.
#[derive(Default)]
pub struct Slots {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    held: BTreeMap<u64, Entry>,
    per_address: HashMap<IpAddr, usize>,
}

struct Entry {
    address: IpAddr,
    /// Still waiting for its request head: may be closed for a newcomer.
    waiting: bool,
    closed: Arc<Notify>,
}

/// One held connection; it gives its place back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    closed: Arc<Notify>,
}

/// Why a connection was not given a place: its address holds [`PER_ADDRESS`] already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

impl Slots {
    pub fn new() -> Arc<Slots> {
        Arc::new(Slots::default())
    }

    /// A place for a connection from `address`, taking the oldest waiting one's if all are
    /// held, else the oldest one's.
    pub fn enter(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Refused> {
        let address = share_of(address);
        let mut inner = self.lock();
        if inner.per_address.get(&address).copied().unwrap_or(0) >= PER_ADDRESS {
            return Err(Refused);
        }
        if inner.held.len() >= CONNECTIONS {
            let waiting = inner
                .held
                .iter()
                .find(|(_, e)| e.waiting)
                .map(|(&id, _)| id);
            let oldest = waiting.or_else(|| inner.held.keys().next().copied());
            if let Some(entry) = oldest.and_then(|id| inner.remove(id)) {
                entry.closed.notify_one();
            }
        }
        let id = inner.next;
        inner.next += 1;
        let closed = Arc::new(Notify::new());
        inner.held.insert(
            id,
            Entry {
                address,
                waiting: true,
                closed: closed.clone(),
            },
        );
        *inner.per_address.entry(address).or_default() += 1;
        Ok(Slot {
            slots: self.clone(),
            id,
            closed,
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves plain counts behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What an address counts under: itself for IPv4, its /64 for IPv6.
fn share_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        other => other,
    }
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.held.remove(&id)?;
        if let Some(n) = self.per_address.get_mut(&entry.address) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&entry.address);
            }
        }
        Some(entry)
    }
}

impl Slot {
    /// Its head has arrived: it is no longer closed for a newcomer.
    pub fn has_head(&self) {
        if let Some(entry) = self.slots.lock().held.get_mut(&self.id) {
            entry.waiting = false;
        }
    }

    /// Resolves when a newcomer took this connection's place.
    pub async fn taken(&self) {
        self.closed.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn one_address_holds_at_most_its_share() {
        let slots = Slots::new();
        let held: Vec<Slot> = (0..PER_ADDRESS)
            .map(|_| slots.enter(ip(2)).unwrap())
            .collect();
        assert_eq!(slots.enter(ip(2)).err(), Some(Refused));
        let v6 = |n: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, n]);
        let same_64: Vec<Slot> = (0..PER_ADDRESS as u16)
            .map(|n| slots.enter(v6(n)).unwrap())
            .collect();
        assert_eq!(
            slots.enter(v6(999)).err(),
            Some(Refused),
            "one /64 is one share"
        );
        drop(same_64);
        assert!(slots.enter(ip(3)).is_ok());
        drop(held);
        assert!(slots.enter(ip(2)).is_ok());
    }

    #[tokio::test]
    async fn when_full_the_oldest_waiting_connection_gives_way() {
        let slots = Slots::new();
        let mut held: Vec<Slot> = (0..CONNECTIONS)
            .map(|i| slots.enter(ip(10 + (i / PER_ADDRESS) as u8)).unwrap())
            .collect();
        // The first has its head (an answer being written): the second is the oldest waiting.
        held[0].has_head();
        let newcomer = slots.enter(ip(200)).expect("a place");
        tokio::time::timeout(Duration::from_secs(1), held[1].taken())
            .await
            .expect("the oldest waiting one was told");
        assert_eq!(slots.held(), CONNECTIONS);
        // Every place held by a connection with its head: the oldest of all gives way.
        for slot in held.iter().chain([&newcomer]) {
            slot.has_head();
        }
        let last = slots.enter(ip(201)).expect("a place");
        tokio::time::timeout(Duration::from_secs(1), held[0].taken())
            .await
            .expect("the oldest was told");
        held.clear();
        assert_eq!(slots.held(), 2);
        drop((newcomer, last));
        assert_eq!(slots.held(), 0);
    }
}
