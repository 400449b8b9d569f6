//! Balancing: the order in which a connection tries its route's backends, and the runtime
//! state behind that order, which outlives any one configuration.
//!
//! A [`Pools`] is built beside each configuration with fresh state; [`Registry::adopt`] then
//! swaps in the state that already exists for the same route or backend, so a reload does
//! not reset a round-robin position (and, later, counters and health). The registry holds
//! that state weakly: a backend no configuration names any more is forgotten.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::route::{Backend, RouteTable};

/// The backends of one route, in the order of the `--route` rule, with their state.
#[derive(Debug)]
pub struct Pool {
    /// The route as written (`[HOST]PATH`), the key its state is kept under.
    key: String,
    backends: Vec<Backend>,
    /// Where the next round-robin turn starts.
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// The route as written (`[HOST]PATH`).
    pub fn route(&self) -> &str {
        &self.key
    }

    /// The backends in the order this connection should try them: round-robin start, then
    /// the rest in turn, so a failed connect moves on to the next backend.
    pub fn order(&self) -> impl Iterator<Item = &Backend> {
        let list = &self.backends;
        let start = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
        list[start..].iter().chain(list[..start].iter())
    }
}

/// One pool per route, indexed like the route table.
#[derive(Debug, Default)]
pub struct Pools {
    pools: Vec<Pool>,
}

impl Pools {
    /// Pools for `routes`, with fresh state.
    pub fn new(routes: &RouteTable) -> Pools {
        let pools = routes
            .iter()
            .map(|route| Pool {
                key: route.to_string(),
                backends: route.spec.backends.clone(),
                next: Arc::default(),
            })
            .collect();
        Pools { pools }
    }

    /// The pool of the route at `index` in the route table.
    pub fn get(&self, index: usize) -> &Pool {
        &self.pools[index]
    }
}

/// The balancing state that lives as long as the process, keyed by route.
#[derive(Debug, Default)]
pub struct Registry {
    turns: Mutex<WeakMap<String, AtomicUsize>>,
}

impl Registry {
    /// Gives `pools` the state already kept for their routes, and keeps theirs for the rest.
    pub fn adopt(&self, pools: &mut Pools) {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        for pool in &mut pools.pools {
            pool.next = turns.share(&pool.key, &pool.next);
        }
        turns.forget_dead();
    }
}

/// Shared values by key, held weakly.
#[derive(Debug)]
struct WeakMap<K, V> {
    map: HashMap<K, Weak<V>>,
}

impl<K, V> Default for WeakMap<K, V> {
    fn default() -> Self {
        WeakMap {
            map: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V> WeakMap<K, V> {
    /// The value kept under `key` if it is still alive, else `fresh`, now kept.
    fn share(&mut self, key: &K, fresh: &Arc<V>) -> Arc<V> {
        if let Some(alive) = self.map.get(key).and_then(Weak::upgrade) {
            return alive;
        }
        self.map.insert(key.clone(), Arc::downgrade(fresh));
        fresh.clone()
    }

    fn forget_dead(&mut self) {
        self.map.retain(|_, v| v.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(rules: &[&str]) -> Pools {
        let specs = rules.iter().map(|r| r.parse().expect("rule")).collect();
        Pools::new(&RouteTable::new(specs).expect("table"))
    }

    fn order(pool: &Pool) -> String {
        pool.order().map(|b| b.host().to_string()).collect()
    }

    #[test]
    fn round_robin_then_failover_order() {
        let p = pools(&["/=a:1,b:1,c:1"]);
        let r = p.get(0);
        assert_eq!(order(r), "abc");
        assert_eq!(order(r), "bca");
        assert_eq!(order(r), "cab");
    }

    #[test]
    fn adopted_pools_keep_their_turn_across_a_reload() {
        let registry = Registry::default();
        let mut old = pools(&["/=a:1,b:1,c:1", "/x=d:1,e:1"]);
        registry.adopt(&mut old);
        assert_eq!(order(old.get(0)), "abc");
        let mut new = pools(&["/y=f:1", "/=a:1,b:1,c:1"]);
        registry.adopt(&mut new);
        assert_eq!(
            order(new.get(1)),
            "bca",
            "the same route goes on where it was"
        );
        assert_eq!(order(old.get(0)), "cab", "old and new share one counter");
        drop(old);
        let mut newer = pools(&["/x=d:1,e:1"]);
        registry.adopt(&mut newer);
        assert_eq!(
            order(newer.get(0)),
            "de",
            "a route no config held starts afresh"
        );
    }
}
