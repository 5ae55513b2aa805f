//! The lease protocol: who is alive, and which leases this worker should take.
//!
//! Workers never compare clocks. Each bumps a heartbeat counter in its worker item; an
//! observer calls a worker dead when the counter has not moved for `failover_time` on the
//! observer's own monotonic clock. Lease items are written only on checkpoints and
//! ownership changes, so the idle write cost grows with workers, not with shards.
//!
//! Taking is conditional on the owner and epoch the taker saw (see
//! [`dynamodb_streams_leases::LeaseStore::take_lease`]), so two workers planning from the same scan
//! cannot both win. Balance: each worker aims for `ceil(active leases / live workers)`. It
//! first takes unowned leases and those of dead workers (children of its own finished shards
//! first, then the oldest); if still short, it asks the most loaded worker to hand one over,
//! and takes it by force only if the handoff does not happen within the handoff timeout.
//! The functions here are pure: the worker runtime (`worker.rs`) does the I/O.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey, WorkerRecord};
use tokio::time::Instant;

/// Liveness of workers as this worker observes it.
#[derive(Debug)]
pub(crate) struct Liveness {
    failover_time: Duration,
    /// Per worker: the last counter seen and when (our clock) it was first seen.
    seen: HashMap<String, (u64, Instant)>,
}

impl Liveness {
    pub(crate) fn new(failover_time: Duration) -> Self {
        Self {
            failover_time,
            seen: HashMap::new(),
        }
    }

    /// Records a scan of the worker items; workers whose item is gone are forgotten.
    pub(crate) fn observe(&mut self, workers: &[WorkerRecord], now: Instant) {
        let present: HashSet<&str> = workers.iter().map(|w| w.worker_id.as_str()).collect();
        self.seen.retain(|id, _| present.contains(id.as_str()));
        for worker in workers {
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
    pub(crate) fn live_workers(&self, now: Instant) -> HashSet<String> {
        self.seen
            .keys()
            .filter(|id| self.is_alive(id, now))
            .cloned()
            .collect()
    }

    /// Workers whose items exist but whose counters stopped: candidates for cleanup.
    pub(crate) fn dead_workers(&self, now: Instant) -> Vec<String> {
        self.seen
            .keys()
            .filter(|id| !self.is_alive(id, now))
            .cloned()
            .collect()
    }
}

/// Whether a lease counts toward balance: a shard not yet finished.
pub(crate) fn is_active(lease: &Lease) -> bool {
    !lease.key.is_coordination() && lease.checkpoint != Checkpoint::ShardEnd
}

/// A shard may be processed once every parent is finished or gone (trimmed, cleaned up).
pub(crate) fn parents_done(lease: &Lease, by_key: &HashMap<&LeaseKey, &Lease>) -> bool {
    lease.parent_shard_ids.iter().all(|parent| {
        let key = LeaseKey::new(lease.key.stream.clone(), parent.clone());
        by_key
            .get(&key)
            .is_none_or(|parent| parent.checkpoint == Checkpoint::ShardEnd)
    })
}

/// Parents of `lease` that the scan did not return. The scan alone does not prove them
/// gone (an item that did not decode is skipped, a page may be stale): the worker confirms
/// each with a consistent read before the child starts.
pub(crate) fn missing_parents(lease: &Lease, by_key: &HashMap<&LeaseKey, &Lease>) -> Vec<LeaseKey> {
    lease
        .parent_shard_ids
        .iter()
        .map(|parent| LeaseKey::new(lease.key.stream.clone(), parent.clone()))
        .filter(|key| !by_key.contains_key(key))
        .collect()
}

/// What this worker should do after a scan.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Leases to take (unowned, or owned by dead workers, or handoffs that timed out).
    pub take: Vec<Lease>,
    /// Leases to ask their owners for (several at once, so a joining worker reaches its
    /// share in a few ticks, not one lease per tick).
    pub request_handoffs: Vec<Lease>,
}

/// Decides which leases `me` takes, given the scan and the live workers (from their
/// heartbeats: a worker that owns nothing yet still counts toward the fair share).
///
/// `handoffs_due` lists leases this worker asked for earlier whose handoff timeout passed
/// while the owner (same epoch) still held them: they are taken by force.
pub(crate) fn plan(
    me: &str,
    leases: &[Lease],
    live: &HashSet<String>,
    handoffs_due: &HashSet<LeaseKey>,
) -> Plan {
    let is_alive = |worker: &str| worker == me || live.contains(worker);
    let active: Vec<&Lease> = leases.iter().filter(|l| is_active(l)).collect();
    let live_workers = live.len() + usize::from(!live.contains(me));
    let target = active.len().div_ceil(live_workers);
    let mine = active.iter().filter(|l| l.is_owned_by(me)).count();
    let mut wanted = target.saturating_sub(mine);
    let mut plan = Plan::default();
    if wanted == 0 {
        return plan;
    }

    // Unowned and dead-owner leases: children of shards this worker finished first (it may
    // continue into them at once), then the oldest.
    let finished_by_me: HashSet<(&str, &str)> = leases
        .iter()
        .filter(|l| l.checkpoint == Checkpoint::ShardEnd && l.is_owned_by(me))
        .map(|l| (l.key.stream.as_str(), l.key.shard_id.as_str()))
        .collect();
    let continues_mine = |l: &Lease| {
        l.parent_shard_ids
            .iter()
            .any(|p| finished_by_me.contains(&(l.key.stream.as_str(), p.as_str())))
    };
    let mut available: Vec<&Lease> = active
        .iter()
        .copied()
        .filter(|l| {
            l.owner
                .as_deref()
                .is_none_or(|owner| owner != me && !is_alive(owner))
        })
        .collect();
    available.sort_by_key(|l| (!continues_mine(l), l.created_at, l.key.clone()));
    // Workers that plan from the same scan would all pick the same oldest leases and all
    // but one take would fail: each starts at its own offset among the others (children
    // of its finished shards stay first), then keeps the oldest-first order.
    let continuing = available.iter().take_while(|l| continues_mine(l)).count();
    let rest = available.len() - continuing;
    if rest > 0 {
        available[continuing..].rotate_left(offset_of(me, rest));
    }
    let mut chosen: Vec<&Lease> = available.into_iter().take(wanted).collect();
    chosen.sort_by_key(|l| (!continues_mine(l), l.created_at, l.key.clone()));
    wanted -= chosen.len();
    plan.take.extend(chosen.into_iter().cloned());

    // Handoffs that were asked for and not granted in time.
    for lease in active.iter().filter(|l| handoffs_due.contains(&l.key)) {
        if wanted == 0 {
            break;
        }
        plan.take.push((*lease).clone());
        wanted -= 1;
    }
    if wanted == 0 {
        return plan;
    }

    // Still short: ask live workers above the share for their excess, split among the
    // workers under it (so two requesters do not take a donor below its share); if none is
    // above the share, ask the most loaded for one lease when it holds two more than this
    // worker will (otherwise moving a lease would only move the imbalance).
    let mut load: HashMap<&str, Vec<&Lease>> = HashMap::new();
    for lease in &active {
        if let Some(owner) = lease.owner.as_deref().filter(|o| *o != me && is_alive(o)) {
            load.entry(owner).or_default().push(lease);
        }
    }
    let mine_after_takes = mine + plan.take.len();
    // Requests already made and not yet granted (or due) will bring leases too.
    let pending = active
        .iter()
        .filter(|l| l.handoff_to.as_deref() == Some(me) && !handoffs_due.contains(&l.key))
        .count();
    if pending >= wanted {
        return plan;
    }
    wanted -= pending;
    let mut donors: Vec<(&str, Vec<&Lease>)> = load.into_iter().collect();
    donors.sort_by_key(|(owner, owned)| (std::cmp::Reverse(owned.len()), *owner));
    // A worker far under the share (a newcomer) also asks workers above the floor of the
    // share for their excess over it: when every worker is at the ceiling or one below,
    // nobody is above the share, and one lease per round would be slow.
    let floor = active.len() / live_workers;
    let keep = if mine_after_takes + 1 < floor {
        floor
    } else {
        target
    };
    let needy = {
        let owners: HashMap<&str, usize> = donors.iter().map(|(o, l)| (*o, l.len())).collect();
        live.iter()
            .filter(|w| w.as_str() != me && owners.get(w.as_str()).is_none_or(|n| *n < keep))
            .count()
            + 1
    };
    let my_slot = offset_of(me, needy);
    for (i, (_, owned)) in donors.iter().enumerate() {
        if wanted == 0 || owned.len() <= keep {
            break;
        }
        let excess = owned.len() - keep;
        // A donor with less excess than there are needy workers is asked by only `excess`
        // of them (each requester by its own slot), not drained by all of them at once.
        if excess < needy && (my_slot + i) % needy >= excess {
            continue;
        }
        let quota = excess.div_ceil(needy).min(wanted);
        let mut askable: Vec<&Lease> = owned
            .iter()
            .copied()
            .filter(|l| l.handoff_to.is_none())
            .collect();
        askable.sort_by_key(|l| std::cmp::Reverse((l.created_at, l.key.clone())));
        let len = askable.len();
        if len > 0 {
            askable.rotate_left(offset_of(me, len));
        }
        for lease in askable.into_iter().take(quota) {
            plan.request_handoffs.push(lease.clone());
            wanted -= 1;
        }
    }
    tracing::debug!(
        me,
        mine,
        target,
        wanted,
        pending,
        busiest = donors.first().map_or(0, |(_, owned)| owned.len()),
        asked = plan.request_handoffs.len(),
        "under the share"
    );
    // Among equally loaded donors, each requester picks its own, so that simultaneous
    // requesters do not drain one donor below the share.
    let busiest = donors.first().map_or(0, |(_, owned)| owned.len());
    let tied = donors
        .iter()
        .take_while(|(_, owned)| owned.len() == busiest)
        .count();
    if plan.request_handoffs.is_empty()
        && pending == 0
        && tied > 0
        && let Some((_, owned)) = donors.get(offset_of(me, tied))
        && owned.len() > mine_after_takes + 1
    {
        plan.request_handoffs.extend(
            owned
                .iter()
                .filter(|l| l.handoff_to.is_none())
                .max_by_key(|l| (l.created_at, l.key.clone()))
                .map(|l| (*l).clone()),
        );
    }
    plan
}

/// A stable per-worker offset in `0..len`, so workers spread their picks.
fn offset_of(me: &str, len: usize) -> usize {
    // FNV-1a: stable across runs and platforms (unlike the std hasher's random keys).
    let hash = me.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % len as u64) as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn live(workers: &[&str]) -> HashSet<String> {
        workers.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_worker_that_owns_nothing_still_counts_toward_the_fair_share() {
        let leases: Vec<Lease> = (0..4)
            .map(|i| lease(&i.to_string(), Some("busy")))
            .collect();
        let plan = plan("me", &leases, &live(&["busy", "idle"]), &HashSet::new());
        assert!(plan.take.is_empty(), "nothing is free");
        assert!(
            !plan.request_handoffs.is_empty(),
            "busy holds 4 of a fair share of 2"
        );
        let busy_view = super::plan(
            "busy",
            &leases,
            &live(&["busy", "idle", "me"]),
            &HashSet::new(),
        );
        assert_eq!(
            busy_view,
            Plan::default(),
            "busy is over its share and takes nothing"
        );
    }

    fn lease(shard: &str, owner: Option<&str>) -> Lease {
        let mut lease = Lease::new(LeaseKey::new("arn", shard), Checkpoint::TrimHorizon, vec![]);
        lease.owner = owner.map(str::to_owned);
        lease
    }

    /// Leases of shards "1", "2", ... with these owners.
    fn numbered(owners: &[Option<&str>]) -> Vec<Lease> {
        let shard = |i: usize| (i + 1).to_string();
        owners
            .iter()
            .enumerate()
            .map(|(i, o)| lease(&shard(i), *o))
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
        assert_eq!(liveness.dead_workers(end), ["b"]);
        liveness.observe(&[worker("a", 3)], end);
        assert!(!liveness.is_alive("b", end), "a vanished item is dead");
        assert!(!liveness.is_alive("never-seen", end));
    }

    #[test]
    fn takes_unowned_and_dead_leases_up_to_the_fair_share() {
        let leases = numbered(&[None, Some("dead"), Some("other"), Some("other")]);
        let plan = plan("me", &leases, &live(&["other"]), &HashSet::new());
        let taken: Vec<_> = plan.take.iter().map(|l| l.key.shard_id.as_str()).collect();
        assert_eq!(taken, ["1", "2"]);
        assert_eq!(plan.request_handoffs, []);
    }

    #[test]
    fn asks_the_busiest_worker_for_a_handoff_when_nothing_is_free() {
        let leases = numbered(&[Some("a"), Some("a"), Some("a"), Some("b")]);
        let plan = plan("me", &leases, &live(&["a", "b"]), &HashSet::new());
        assert!(plan.take.is_empty());
        assert_eq!(plan.request_handoffs[0].owner.as_deref(), Some("a"));
    }

    #[test]
    fn a_joining_worker_asks_for_its_whole_share_at_once_without_overdrawing_donors() {
        // a and b hold 6 each; c and me own nothing: the share is 3, the excess 3 + 3,
        // split between the two workers under the share.
        let owners: Vec<Option<&str>> = [Some("a"); 6].into_iter().chain([Some("b"); 6]).collect();
        let leases = numbered(&owners);
        let everyone = live(&["a", "b", "c"]);
        let mine = plan("me", &leases, &everyone, &HashSet::new());
        assert!(mine.take.is_empty());
        assert_eq!(
            mine.request_handoffs.len(),
            3,
            "{:?}",
            mine.request_handoffs
        );
        let from = |p: &Plan, owner: &str| {
            p.request_handoffs
                .iter()
                .filter(|l| l.owner.as_deref() == Some(owner))
                .count()
        };
        assert!(from(&mine, "a") <= 2 && from(&mine, "b") <= 2, "{mine:?}");
        // Once asked, the marks count as pending: nothing more is asked.
        let mut asked = leases.clone();
        for lease in &mut asked {
            if mine.request_handoffs.iter().any(|r| r.key == lease.key) {
                lease.handoff_to = Some("me".into());
            }
        }
        assert_eq!(
            plan("me", &asked, &everyone, &HashSet::new()),
            Plan::default()
        );
    }

    #[test]
    fn workers_planning_from_one_scan_spread_their_takes() {
        let leases = numbered(&[None; 40]);
        let everyone = live(&["w0", "w1", "w2", "w3"]);
        let picks: Vec<HashSet<LeaseKey>> = ["w0", "w1", "w2", "w3"]
            .iter()
            .map(|w| {
                plan(w, &leases, &everyone, &HashSet::new())
                    .take
                    .into_iter()
                    .map(|l| l.key)
                    .collect()
            })
            .collect();
        assert!(picks.iter().all(|p| p.len() == 10));
        let distinct: HashSet<&LeaseKey> = picks.iter().flatten().collect();
        assert!(
            distinct.len() > 20,
            "workers picked mostly the same leases: {}",
            distinct.len()
        );
    }

    #[test]
    fn no_handoff_is_asked_when_free_leases_fill_the_share() {
        // a holds 2 of 3, one is free: taking it brings me to my share of 2 at most.
        let leases = numbered(&[Some("a"), Some("a"), None]);
        let plan = plan("me", &leases, &live(&["a"]), &HashSet::new());
        assert_eq!(plan.take.len(), 1);
        assert_eq!(plan.request_handoffs, [], "a is at its fair share");
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
    fn balanced_workers_leave_each_other_alone() {
        let leases = numbered(&[Some("a"), Some("me"), Some("b")]);
        assert_eq!(
            plan("me", &leases, &live(&["a", "b"]), &HashSet::new()),
            Plan::default()
        );
    }

    #[test]
    fn finished_shards_do_not_count_and_children_of_mine_come_first() {
        let mut parent = lease("p", Some("me"));
        parent.checkpoint = Checkpoint::ShardEnd;
        let mut child = lease("c", None);
        child.parent_shard_ids = vec!["p".into()];
        child.created_at = SystemTime::now() + Duration::from_secs(60);
        let older = lease("o", None);
        let leases = vec![parent, older, child, lease("x", Some("b"))];
        let plan = plan("me", &leases, &live(&["b"]), &HashSet::new());
        let taken: Vec<_> = plan.take.iter().map(|l| l.key.shard_id.as_str()).collect();
        assert_eq!(taken, ["c", "o"]);
    }

    #[test]
    fn parents_gate_children() {
        let mut parent = lease("p", Some("a"));
        let mut child = lease("c", None);
        child.parent_shard_ids = vec!["p".into(), "gone".into()];
        let leases = [parent.clone(), child.clone()];
        let by_key: HashMap<_, _> = leases.iter().map(|l| (&l.key, l)).collect();
        assert!(!parents_done(&child, &by_key));
        parent.checkpoint = Checkpoint::ShardEnd;
        let leases = [parent, child.clone()];
        let by_key: HashMap<_, _> = leases.iter().map(|l| (&l.key, l)).collect();
        assert!(parents_done(&child, &by_key));
    }
}
