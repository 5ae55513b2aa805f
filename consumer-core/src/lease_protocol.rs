//! The lease protocol: who is alive, and who should own which lease.
//!
//! Workers never compare clocks. Each bumps a heartbeat counter in its membership item; an
//! observer calls a worker dead when the counter has not moved for `failover_time` on the
//! observer's own monotonic clock. The leader (see `leader.rs`) observes every worker this
//! way; every worker observes the leader the same way through the coordination item.
//!
//! One planner, the leader, decides who owns what ([`assign`]): every worker gets
//! `floor` or `ceil` of `active leases / live workers` (balance within one lease); leases
//! without a live owner go to the workers under their share (a child to the worker that
//! finished its parent first, a lease asked for to the worker that asked), and workers
//! above their share are asked to hand leases to the workers still under it. Takes are
//! conditional on the owner and epoch the leader saw (see
//! [`dynamodb_streams_leases::LeaseStore::take_lease`]), so a stale plan fails instead of
//! stealing. A live owner is never taken from: it hands a lease over when asked, after its
//! batch. The functions here are pure: the leader and the worker runtime do the I/O.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use dynamodb_streams_leases::{Checkpoint, Lease, WorkerRecord};
use tokio::time::Instant;

/// Liveness of workers as this worker observes it.
#[derive(Debug)]
pub(crate) struct Liveness {
    failover_time: Duration,
    /// Per worker: the last counter seen and when (our clock) it was first seen.
    seen: BTreeMap<String, (u64, Instant)>,
    /// Workers known dead without our own observation (a leader this worker replaced after
    /// judging it dead): never alive again, whatever their entry shows; with the counter
    /// their record showed last.
    dead: BTreeMap<String, Option<u64>>,
}

impl Liveness {
    pub(crate) fn new(failover_time: Duration) -> Self {
        Self {
            failover_time,
            seen: BTreeMap::new(),
            dead: BTreeMap::new(),
        }
    }

    /// Counts `worker` dead from now on (its entry may still show for a while).
    pub(crate) fn mark_dead(&mut self, worker: &str) {
        let counter = self.seen.remove(worker).map(|(counter, _)| counter);
        self.dead.insert(worker.to_owned(), counter);
    }

    /// Records a read of the worker records; workers whose record is gone are forgotten.
    pub(crate) fn observe(&mut self, workers: &[WorkerRecord], now: Instant) {
        let present: BTreeSet<&str> = workers.iter().map(|w| w.worker_id.as_str()).collect();
        self.seen.retain(|id, _| present.contains(id.as_str()));
        self.dead.retain(|id, _| present.contains(id.as_str()));
        for worker in workers {
            if let Some(counter) = self.dead.get_mut(&worker.worker_id) {
                *counter = Some(worker.heartbeat);
                continue;
            }
            // The clock restarts only when the counter moves.
            let unchanged = self
                .seen
                .get(&worker.worker_id)
                .is_some_and(|(counter, _)| *counter == worker.heartbeat);
            if !unchanged {
                self.seen
                    .insert(worker.worker_id.clone(), (worker.heartbeat, now));
            }
        }
    }

    /// Alive: its item exists and its counter moved within `failover_time`.
    pub(crate) fn is_alive(&self, worker: &str, now: Instant) -> bool {
        self.seen
            .get(worker)
            .is_some_and(|(_, since)| now.duration_since(*since) < self.failover_time)
    }

    /// When the next live worker turns dead if its counter does not move: the worker scans
    /// then, so a takeover does not wait for the next regular tick.
    pub(crate) fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.seen
            .values()
            .map(|(_, since)| *since + self.failover_time)
            .filter(|at| *at > now)
            .min()
    }

    /// Workers whose counters moved within `failover_time`.
    pub(crate) fn live_workers(&self, now: Instant) -> BTreeSet<String> {
        self.seen
            .keys()
            .filter(|id| self.is_alive(id, now))
            .cloned()
            .collect()
    }

    /// Workers whose records exist but whose counters stopped (or that are known dead),
    /// with the counter last seen: their records are removed, conditional on it.
    pub(crate) fn dead_workers(&self, now: Instant) -> Vec<(String, u64)> {
        let mut dead: Vec<(String, u64)> = self
            .seen
            .iter()
            .filter(|(id, _)| !self.is_alive(id, now))
            .map(|(id, (counter, _))| (id.clone(), *counter))
            .chain(
                self.dead
                    .iter()
                    .filter_map(|(id, counter)| Some((id.clone(), (*counter)?))),
            )
            .collect();
        dead.sort();
        dead
    }
}

/// Whether a lease counts toward balance: a shard not yet finished.
pub(crate) fn is_active(lease: &Lease) -> bool {
    !lease.key.is_coordination() && lease.checkpoint != Checkpoint::ShardEnd
}

/// What the leader does after planning: takes on behalf of workers, and handoff requests.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Assignment {
    /// Leases without a live owner, and the worker each goes to (a take on its behalf,
    /// conditional on the lease's owner and epoch as planned).
    pub takes: Vec<(Lease, String)>,
    /// Leases of workers above their share, and the worker under its share each owner is
    /// asked to hand it to.
    pub handoffs: Vec<(Lease, String)>,
}

/// Decides who should own which active lease, given the leases and the live workers
/// (every worker whose heartbeat moved within the failover time, the planner too).
///
/// Each live worker's share is `floor` or `ceil` of `active / live` (the workers holding
/// the most keep the larger shares, so as few leases as possible move). A lease whose
/// handoff is pending counts for the worker it goes to. Leases without a live owner go to
/// workers under their share: to the worker that asked for it, or to the worker that
/// finished one of its parents (it continues the shard's history), when under its share;
/// otherwise to the worker furthest under its share (ties by id). Then workers still under
/// their share get handoff requests from the workers above theirs, the most recently
/// created leases first (the least read). Deterministic: the same input gives the same
/// plan.
pub(crate) fn assign(leases: &[Lease], live: &BTreeSet<String>) -> Assignment {
    let mut plan = Assignment::default();
    if live.is_empty() {
        return plan;
    }
    let active: Vec<&Lease> = leases.iter().filter(|l| is_active(l)).collect();
    let is_live = |worker: Option<&str>| worker.is_some_and(|w| live.contains(w));
    // What each live worker will hold once the pending handoffs are done.
    let mut held: BTreeMap<&str, i64> = live.iter().map(|w| (w.as_str(), 0)).collect();
    let mut orphans: Vec<&Lease> = Vec::new();
    let mut movable: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
    for lease in &active {
        let owner = lease.owner.as_deref();
        if !is_live(owner) {
            orphans.push(lease);
            continue;
        }
        let to = lease.handoff_to.as_deref().filter(|to| live.contains(*to));
        let holder = to.or(owner).unwrap_or_default();
        *held.entry(holder).or_default() += 1;
        if lease.handoff_to.is_none() {
            movable
                .entry(owner.unwrap_or_default())
                .or_default()
                .push(lease);
        }
    }
    // Shares: floor for everyone, ceil for the `extra` workers holding the most.
    let workers = i64::try_from(live.len()).unwrap_or(i64::MAX);
    let total = i64::try_from(active.len()).unwrap_or(i64::MAX);
    let (floor, extra) = (total / workers, total % workers);
    let mut by_load: Vec<(&str, i64)> = held.iter().map(|(w, n)| (*w, *n)).collect();
    by_load.sort_by_key(|(w, n)| (Reverse(*n), *w));
    let mut wanted: BTreeMap<&str, i64> = by_load
        .iter()
        .enumerate()
        .map(|(i, (w, n))| {
            let share = floor + i64::from(i64::try_from(i).unwrap_or(i64::MAX) < extra);
            (*w, share - n)
        })
        .collect();

    // Orphans, oldest first, to a preferred worker under its share, else to the one
    // furthest under it.
    let finished_by: BTreeMap<(&str, &str), &str> = leases
        .iter()
        .filter(|l| l.checkpoint == Checkpoint::ShardEnd)
        .filter_map(|l| {
            Some((
                (l.key.stream.as_str(), l.key.shard_id.as_str()),
                l.owner.as_deref()?,
            ))
        })
        .collect();
    orphans.sort_by_key(|l| (l.created_at, &l.key));
    let mut neediest: BinaryHeap<(i64, Reverse<&str>)> = wanted
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(w, n)| (*n, Reverse(*w)))
        .collect();
    for lease in orphans {
        let preferred = lease
            .handoff_to
            .as_deref()
            .into_iter()
            .chain(lease.parent_shard_ids.iter().filter_map(|parent| {
                finished_by
                    .get(&(lease.key.stream.as_str(), parent.as_str()))
                    .copied()
            }))
            .find(|w| wanted.get(w).is_some_and(|n| *n > 0));
        let to = match preferred {
            Some(to) => to,
            None => {
                // Entries go stale as wants drop: skip those that no longer match.
                let mut found = None;
                while let Some((n, Reverse(w))) = neediest.pop() {
                    if wanted.get(w) == Some(&n) && n > 0 {
                        found = Some(w);
                        break;
                    }
                }
                match found {
                    Some(w) => w,
                    None => break,
                }
            }
        };
        if let Some(n) = wanted.get_mut(to) {
            *n -= 1;
            if *n > 0 {
                neediest.push((*n, Reverse(to)));
            }
        }
        plan.takes.push((lease.clone(), to.to_owned()));
    }

    // Handoffs: from the workers above their share to those still under it.
    let mut donors: Vec<(&str, i64)> = wanted
        .iter()
        .filter(|(_, n)| **n < 0)
        .map(|(w, n)| (*w, -n))
        .collect();
    donors.sort_by_key(|(w, n)| (Reverse(*n), *w));
    // Sorted oldest first: the newest is popped first.
    for leases in movable.values_mut() {
        leases.sort_by_key(|l| (l.created_at, &l.key));
    }
    let needy: Vec<(&str, i64)> = wanted
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(w, n)| (*w, *n))
        .collect();
    let mut donor = 0;
    for (to, mut want) in needy {
        while want > 0 && donor < donors.len() {
            let (from, surplus) = &mut donors[donor];
            let lease = movable.get_mut(*from).and_then(Vec::pop);
            match lease {
                Some(lease) if *surplus > 0 => {
                    plan.handoffs.push((lease.clone(), to.to_owned()));
                    *surplus -= 1;
                    want -= 1;
                }
                _ => {}
            }
            if *surplus == 0 || movable.get(*from).is_none_or(Vec::is_empty) {
                donor += 1;
            }
        }
    }
    plan
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dynamodb_streams_leases::LeaseKey;
    use std::time::SystemTime;

    fn live(workers: &[&str]) -> BTreeSet<String> {
        workers.iter().map(|w| w.to_string()).collect()
    }

    fn lease(shard: &str, owner: Option<&str>) -> Lease {
        let mut lease = Lease::new(LeaseKey::new("arn", shard), Checkpoint::TrimHorizon, vec![]);
        lease.owner = owner.map(str::to_owned);
        lease
    }

    /// Leases of shards "01", "02", ... with these owners, created in that order.
    fn numbered(owners: &[Option<&str>]) -> Vec<Lease> {
        owners
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let mut lease = lease(&format!("{:02}", i + 1), *o);
                lease.created_at = SystemTime::UNIX_EPOCH + Duration::from_secs(i as u64);
                lease
            })
            .collect()
    }

    fn worker(id: &str, heartbeat: u64) -> WorkerRecord {
        WorkerRecord {
            worker_id: id.into(),
            heartbeat,
            updated_at: SystemTime::UNIX_EPOCH,
            expires_at: SystemTime::UNIX_EPOCH,
        }
    }

    /// Owner per lease after applying the plan's takes, and the handoffs asked.
    fn apply(leases: &[Lease], plan: &Assignment) -> (BTreeMap<String, usize>, usize) {
        let mut owners: BTreeMap<&LeaseKey, &str> = leases
            .iter()
            .filter_map(|l| Some((&l.key, l.owner.as_deref()?)))
            .collect();
        for (lease, to) in &plan.takes {
            owners.insert(&lease.key, to);
        }
        for (lease, to) in &plan.handoffs {
            owners.insert(&lease.key, to);
        }
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for owner in owners.values() {
            *per.entry(owner.to_string()).or_default() += 1;
        }
        (per, plan.handoffs.len())
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_is_dead_after_failover_time_without_a_new_heartbeat() {
        let mut liveness = Liveness::new(Duration::from_secs(10));
        let start = Instant::now();
        liveness.observe(&[worker("a", 1), worker("b", 7)], start);
        let later = start + Duration::from_secs(6);
        liveness.observe(&[worker("a", 2), worker("b", 7)], later);
        let end = start + Duration::from_secs(11);
        assert!(liveness.is_alive("a", end), "a moved at 6 s");
        assert!(!liveness.is_alive("b", end), "b stuck since 0 s");
        assert_eq!(liveness.dead_workers(end), [("b".to_owned(), 7)]);
        liveness.observe(&[worker("a", 3)], end);
        assert!(!liveness.is_alive("b", end), "a vanished item is dead");
        assert!(!liveness.is_alive("never-seen", end));
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_expiry_is_when_the_earliest_counter_goes_stale() {
        let mut liveness = Liveness::new(Duration::from_secs(10));
        let start = Instant::now();
        liveness.observe(&[worker("a", 1)], start);
        liveness.observe(
            &[worker("a", 1), worker("b", 1)],
            start + Duration::from_secs(3),
        );
        assert_eq!(
            liveness.next_expiry(start),
            Some(start + Duration::from_secs(10))
        );
        let later = start + Duration::from_secs(11);
        assert_eq!(
            liveness.next_expiry(later),
            Some(start + Duration::from_secs(13))
        );
    }

    #[test]
    fn unowned_and_dead_owners_leases_are_spread_to_a_balance_within_one() {
        let leases = numbered(&[None, Some("dead"), None, Some("a"), None, None, None]);
        let plan = assign(&leases, &live(&["a", "b", "c"]));
        assert!(plan.handoffs.is_empty());
        assert_eq!(plan.takes.len(), 6, "every orphan gets a live owner");
        let (per, _) = apply(&leases, &plan);
        assert_eq!(
            per.values().copied().collect::<Vec<_>>(),
            [3, 2, 2],
            "{per:?}"
        );
        assert!(!per.contains_key("dead"));
    }

    #[test]
    fn a_joining_worker_gets_its_share_by_handoffs_one_from_each_worker_above_it() {
        // 4 workers of 6 each; a fifth joins: 24 / 5 = 4.8, so shares are 5,5,5,5,4.
        let owners: Vec<Option<&str>> = ["a", "b", "c", "d"]
            .iter()
            .flat_map(|w| [Some(*w); 6])
            .collect();
        let leases = numbered(&owners);
        let plan = assign(&leases, &live(&["a", "b", "c", "d", "e"]));
        assert!(plan.takes.is_empty());
        assert_eq!(plan.handoffs.len(), 4);
        let donors: BTreeSet<&str> = plan
            .handoffs
            .iter()
            .map(|(l, _)| l.owner.as_deref().unwrap())
            .collect();
        assert_eq!(donors.len(), 4, "one lease from each: {:?}", plan.handoffs);
        assert!(plan.handoffs.iter().all(|(_, to)| to == "e"));
        // Once asked (the marks pending), nothing more is asked.
        let mut asked = leases.clone();
        for lease in &mut asked {
            if let Some((_, to)) = plan.handoffs.iter().find(|(l, _)| l.key == lease.key) {
                lease.handoff_to = Some(to.clone());
            }
        }
        assert_eq!(
            assign(&asked, &live(&["a", "b", "c", "d", "e"])),
            Assignment::default()
        );
    }

    #[test]
    fn balanced_workers_are_left_alone() {
        let leases = numbered(&[Some("a"), Some("b"), Some("c"), Some("a")]);
        assert_eq!(
            assign(&leases, &live(&["a", "b", "c"])),
            Assignment::default()
        );
    }

    #[test]
    fn a_child_goes_to_the_worker_that_finished_its_parent() {
        let mut parent = lease("p", Some("b"));
        parent.checkpoint = Checkpoint::ShardEnd;
        let mut child = lease("c", None);
        child.parent_shard_ids = vec!["p".into()];
        let leases = vec![parent, child, lease("x", Some("a"))];
        let plan = assign(&leases, &live(&["a", "b"]));
        assert_eq!(plan.takes.len(), 1);
        assert_eq!(plan.takes[0].1, "b");
    }

    #[test]
    fn a_dead_owners_lease_asked_for_goes_to_the_worker_that_asked() {
        let mut asked = lease("1", Some("dead"));
        asked.handoff_to = Some("b".into());
        let leases = vec![asked, lease("2", None), lease("3", Some("a"))];
        let plan = assign(&leases, &live(&["a", "b"]));
        let to: BTreeMap<&str, &str> = plan
            .takes
            .iter()
            .map(|(l, to)| (l.key.shard_id.as_str(), to.as_str()))
            .collect();
        assert_eq!(to["1"], "b");
    }

    #[test]
    fn finished_and_coordination_leases_do_not_count() {
        let mut done = lease("done", None);
        done.checkpoint = Checkpoint::ShardEnd;
        let sync = {
            let mut l = lease("x", None);
            l.key = LeaseKey::coordination("shard-sync");
            l
        };
        let plan = assign(&[done, sync, lease("1", None)], &live(&["a"]));
        assert_eq!(plan.takes.len(), 1);
        assert_eq!(plan.takes[0].0.key.shard_id, "1");
    }

    #[test]
    fn a_large_plan_balances_100000_leases_over_1000_workers() {
        let workers: Vec<String> = (0..1000).map(|i| format!("w{i:04}")).collect();
        let mut leases: Vec<Lease> = (0..100_000)
            .map(|i| lease(&format!("s{i:06}"), None))
            .collect();
        let everyone: BTreeSet<String> = workers.iter().cloned().collect();
        let plan = assign(&leases, &everyone);
        assert_eq!(plan.takes.len(), 100_000);
        let (per, _) = apply(&leases, &plan);
        assert!(per.values().all(|n| *n == 100), "{:?}", per.values().max());
        // Apply it, then a worker joins.
        for (lease, (_, to)) in leases.iter_mut().zip(&plan.takes) {
            lease.owner = Some(to.clone());
        }
        let mut joined = everyone.clone();
        joined.insert("w9999".into());
        let plan = assign(&leases, &joined);
        assert!(plan.takes.is_empty());
        assert_eq!(plan.handoffs.len(), 99);
        let (per, _) = apply(&leases, &plan);
        let (min, max) = (per.values().min().unwrap(), per.values().max().unwrap());
        assert!(max - min <= 1, "{min}..{max}");
    }
}
