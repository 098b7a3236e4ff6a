//! The local tier of the email cache: emails this process read or changed recently,
//! kept in memory for a short TTL (`cache.local_ttl`) in front of Redis.
//!
//! A hit costs a lock of one shard and a clone of an `Arc`: no round trip to Redis (and
//! no hop to its connection's task), no JSON to decode. The price is freshness across
//! instances: a status change made by another instance reaches this one's readers only
//! when the entry expires. This instance's own changes replace its entry at once
//! ([`LocalCache::store`]), and an entry is never replaced by an older copy of the same
//! email (by `updated_at`), so a read racing a status change cannot bring back the state
//! before it.
//!
//! Bounded by `cache.local_capacity` (emails) and `cache.local_max_bytes` (their
//! content): a full shard first drops its expired entries, then arbitrary ones. Nothing
//! here does I/O or knows about protocols.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::domain::{Email, EmailId};

/// Shards, each with its own lock, so concurrent readers rarely wait for each other.
const SHARDS: usize = 16;

struct Entry {
    email: Arc<Email>,
    expires: Instant,
    weight: usize,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<EmailId, Entry>,
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, id: &EmailId) {
        if let Some(entry) = self.entries.remove(id) {
            self.bytes -= entry.weight;
        }
    }
}

/// Recently read emails, for a short TTL. Disabled (every lookup misses, nothing is
/// kept) when the TTL or a capacity is zero.
pub struct LocalCache {
    ttl: Duration,
    shard_capacity: usize,
    shard_max_bytes: usize,
    shards: Box<[Mutex<Shard>]>,
}

/// What an email costs the cache: its text, twice (a delivery adapter may keep a
/// rendering of it about as large, as long as the email is here), and a fixed overhead
/// for the rest.
fn weight(email: &Email) -> usize {
    let mailbox = |m: &crate::domain::Mailbox| {
        m.address.as_str().len() + m.name.as_ref().map_or(0, String::len) + 8
    };
    let text = mailbox(&email.from)
        + email
            .recipients()
            .chain(&email.reply_to)
            .map(mailbox)
            .sum::<usize>()
        + email.subject.len()
        + email.text.as_ref().map_or(0, String::len)
        + email.html.as_ref().map_or(0, String::len)
        + email
            .attachments
            .iter()
            .map(|a| a.filename.len() + a.content_type.len() + 96)
            .sum::<usize>()
        + email
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len())
            .sum::<usize>()
        + email
            .tags
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
        + email.message_id.len()
        + email.last_error.as_ref().map_or(0, String::len)
        + email.idempotency_key.as_ref().map_or(0, String::len);
    2 * text + 512
}

impl LocalCache {
    pub fn new(ttl: Duration, capacity: usize, max_bytes: usize) -> Self {
        let enabled = !ttl.is_zero() && capacity > 0 && max_bytes > 0;
        LocalCache {
            ttl,
            shard_capacity: capacity.div_ceil(SHARDS),
            shard_max_bytes: max_bytes.div_ceil(SHARDS),
            shards: (0..if enabled { SHARDS } else { 0 })
                .map(|_| Mutex::default())
                .collect(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.shards.is_empty()
    }

    /// The email, when a copy younger than the TTL is here.
    pub fn get(&self, id: EmailId) -> Option<Arc<Email>> {
        self.get_at(id, Instant::now())
    }

    /// Keeps `email`, unless a newer copy of it is already here: after a read, and after
    /// this instance changed the email.
    pub fn store(&self, email: Arc<Email>) {
        self.store_at(email, Instant::now());
    }

    fn shard(&self, id: EmailId) -> Option<&Mutex<Shard>> {
        // UUIDv7 ends in random bits; a v4 is random throughout.
        let index = (id.as_uuid().as_u128() as usize) % self.shards.len().max(1);
        self.shards.get(index)
    }

    fn get_at(&self, id: EmailId, now: Instant) -> Option<Arc<Email>> {
        let shard = self.shard(id)?.lock().unwrap_or_else(|p| p.into_inner());
        shard
            .entries
            .get(&id)
            .filter(|entry| entry.expires > now)
            .map(|entry| entry.email.clone())
    }

    fn store_at(&self, email: Arc<Email>, now: Instant) {
        let id = email.id;
        let Some(shard) = self.shard(id) else {
            return;
        };
        let weight = weight(&email);
        if weight > self.shard_max_bytes {
            return;
        }
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = shard.entries.get(&id)
            && existing.expires > now
            && existing.email.updated_at > email.updated_at
        {
            return;
        }
        shard.remove(&id);
        let fits = |shard: &Shard| {
            shard.entries.len() < self.shard_capacity
                && shard.bytes + weight <= self.shard_max_bytes
        };
        if !fits(&shard) {
            let expired: Vec<EmailId> = shard
                .entries
                .iter()
                .filter(|(_, entry)| entry.expires <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in &expired {
                shard.remove(id);
            }
        }
        while !fits(&shard) {
            let Some(victim) = shard.entries.keys().next().copied() else {
                break;
            };
            shard.remove(&victim);
        }
        shard.bytes += weight;
        shard.entries.insert(
            id,
            Entry {
                email,
                expires: now + self.ttl,
                weight,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap().entries.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::domain::EmailStatus;

    fn email(id: EmailId, status: EmailStatus, second: u32) -> Arc<Email> {
        let at = Utc.with_ymd_and_hms(2026, 11, 26, 21, 0, second).unwrap();
        let mut email = Email::example(at);
        email.id = id;
        email.status = status;
        Arc::new(email)
    }

    fn new_id() -> EmailId {
        EmailId::generate()
    }

    #[test]
    fn an_entry_is_served_until_its_ttl_has_passed() {
        let cache = LocalCache::new(Duration::from_secs(1), 100, 1 << 20);
        let start = Instant::now();
        let id = new_id();
        cache.store_at(email(id, EmailStatus::Queued, 0), start);
        let hit = cache.get_at(id, start + Duration::from_millis(999));
        assert_eq!(hit.map(|e| e.status), Some(EmailStatus::Queued));
        assert!(cache.get_at(id, start + Duration::from_secs(1)).is_none());
        assert!(cache.get_at(new_id(), start).is_none());
    }

    #[test]
    fn a_newer_copy_replaces_an_older_one_but_never_the_other_way_round() {
        let cache = LocalCache::new(Duration::from_secs(10), 100, 1 << 20);
        let now = Instant::now();
        let id = new_id();
        cache.store_at(email(id, EmailStatus::Queued, 0), now);
        cache.store_at(email(id, EmailStatus::Sent, 2), now);
        // A reader that fetched the queued copy before the change comes back late.
        cache.store_at(email(id, EmailStatus::Queued, 0), now);
        let status = cache.get_at(id, now).map(|e| e.status);
        assert_eq!(status, Some(EmailStatus::Sent));
    }

    #[test]
    fn an_expired_newer_copy_does_not_block_a_fresh_read() {
        let cache = LocalCache::new(Duration::from_secs(1), 100, 1 << 20);
        let start = Instant::now();
        let id = new_id();
        cache.store_at(email(id, EmailStatus::Sent, 5), start);
        let later = start + Duration::from_secs(2);
        cache.store_at(email(id, EmailStatus::Queued, 0), later);
        let status = cache.get_at(id, later).map(|e| e.status);
        assert_eq!(status, Some(EmailStatus::Queued));
    }

    #[test]
    fn the_capacity_bounds_the_entries_expired_ones_going_first() {
        let cache = LocalCache::new(Duration::from_secs(1), SHARDS * 2, 1 << 20);
        let start = Instant::now();
        for _ in 0..SHARDS * 10 {
            cache.store_at(email(new_id(), EmailStatus::Queued, 0), start);
        }
        assert!(cache.len() <= SHARDS * 2, "{}", cache.len());
        // Once the old ones expired, a new entry pushes them out, not its fresh peers.
        let later = start + Duration::from_secs(5);
        let fresh: Vec<EmailId> = (0..SHARDS * 10).map(|_| new_id()).collect();
        for id in &fresh {
            cache.store_at(email(*id, EmailStatus::Queued, 0), later);
        }
        assert!(cache.len() <= SHARDS * 2);
        let served = fresh
            .iter()
            .filter(|id| cache.get_at(**id, later).is_some())
            .count();
        assert_eq!(served, cache.len(), "every entry left is a fresh one");
    }

    #[test]
    fn the_byte_budget_bounds_the_content_kept() {
        let cache = LocalCache::new(Duration::from_secs(10), 1000, SHARDS * 8 * 1024);
        let now = Instant::now();
        let large = |id| {
            let mut email = Arc::into_inner(email(id, EmailStatus::Queued, 0)).unwrap();
            email.text = Some("x".repeat(3 * 1024));
            Arc::new(email)
        };
        let ids: Vec<EmailId> = (0..SHARDS * 10).map(|_| new_id()).collect();
        for id in &ids {
            cache.store_at(large(*id), now);
        }
        for shard in cache.shards.iter() {
            let shard = shard.lock().unwrap();
            assert!(shard.bytes <= 8 * 1024, "{}", shard.bytes);
            assert_eq!(
                shard.bytes,
                shard.entries.values().map(|e| e.weight).sum::<usize>()
            );
        }
        // An email larger than a shard's budget is not kept at all.
        let id = new_id();
        let mut huge = Arc::into_inner(email(id, EmailStatus::Queued, 0)).unwrap();
        huge.text = Some("x".repeat(64 * 1024));
        cache.store_at(Arc::new(huge), now);
        assert!(cache.get_at(id, now).is_none());
    }

    #[test]
    fn a_zero_ttl_or_capacity_keeps_nothing() {
        for cache in [
            LocalCache::new(Duration::ZERO, 100, 1 << 20),
            LocalCache::new(Duration::from_secs(1), 0, 1 << 20),
            LocalCache::new(Duration::from_secs(1), 100, 0),
        ] {
            assert!(!cache.is_enabled());
            let id = new_id();
            cache.store(email(id, EmailStatus::Queued, 0));
            assert!(cache.get(id).is_none());
        }
    }
}
