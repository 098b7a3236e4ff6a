//! JSON bodies of `GET /api/v1/email/{id}`, kept per cached copy of an email.
//!
//! The use cases hand out emails from their in-process cache as shared `Arc<Email>`s.
//! Encoding one as JSON costs more than the rest of a cached read, so the body made for
//! a copy is kept with a weak reference to that copy: the next read of the same copy
//! sends the same bytes, and a new copy (the email changed, or the entry expired) gets a
//! new body. The weak reference keeps the copy's allocation in place, so a pointer match
//! can only be the same copy. Bounded by entries; a full shard drops arbitrary ones.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use bytes::Bytes;

use crate::domain::{Email, EmailId};

const SHARDS: usize = 16;

struct Rendered {
    copy: Weak<Email>,
    body: Bytes,
}

pub struct RenderedEmails {
    shard_capacity: usize,
    shards: Box<[Mutex<HashMap<EmailId, Rendered>>]>,
}

impl RenderedEmails {
    /// Keeps at most `capacity` bodies; zero keeps none (every read renders).
    pub fn new(capacity: usize) -> Self {
        RenderedEmails {
            shard_capacity: capacity.div_ceil(SHARDS),
            shards: (0..if capacity > 0 { SHARDS } else { 0 })
                .map(|_| Mutex::default())
                .collect(),
        }
    }

    /// The body of this copy of the email, rendered by `render` unless it was before.
    pub fn body(&self, email: &Arc<Email>, render: impl FnOnce(&Email) -> Bytes) -> Bytes {
        let Some(shard) = self.shard(email.id) else {
            return render(email);
        };
        {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(kept) = shard.get(&email.id)
                && std::ptr::eq(kept.copy.as_ptr(), Arc::as_ptr(email))
            {
                return kept.body.clone();
            }
        }
        let body = render(email);
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.shard_capacity
            && !shard.contains_key(&email.id)
            && let Some(victim) = shard.keys().next().copied()
        {
            shard.remove(&victim);
        }
        shard.insert(
            email.id,
            Rendered {
                copy: Arc::downgrade(email),
                body: body.clone(),
            },
        );
        body
    }

    fn shard(&self, id: EmailId) -> Option<&Mutex<HashMap<EmailId, Rendered>>> {
        let index = (id.as_uuid().as_u128() as usize) % self.shards.len().max(1);
        self.shards.get(index)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    #[test]
    fn a_copy_is_rendered_once_and_a_new_copy_again() {
        let cache = RenderedEmails::new(100);
        let copy = Arc::new(Email::example(Utc::now()));
        let mut renders = 0;
        for _ in 0..3 {
            let body = cache.body(&copy, |e| {
                renders += 1;
                Bytes::from(e.subject.clone())
            });
            assert_eq!(body, "Subject line");
        }
        assert_eq!(renders, 1);
        let mut changed = Email::clone(&copy);
        changed.subject = "Changed".into();
        let body = cache.body(&Arc::new(changed), |e| Bytes::from(e.subject.clone()));
        assert_eq!(body, "Changed");
    }

    #[test]
    fn the_capacity_bounds_the_bodies_kept_and_zero_keeps_none() {
        let cache = RenderedEmails::new(SHARDS);
        let copies: Vec<Arc<Email>> = (0..SHARDS * 10)
            .map(|_| {
                let mut email = Email::example(Utc::now());
                email.id = EmailId::generate();
                Arc::new(email)
            })
            .collect();
        for copy in &copies {
            cache.body(copy, |_| Bytes::new());
        }
        let kept: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(kept <= SHARDS, "{kept}");

        let none = RenderedEmails::new(0);
        let mut renders = 0;
        for _ in 0..2 {
            none.body(&copies[0], |_| {
                renders += 1;
                Bytes::new()
            });
        }
        assert_eq!(renders, 2);
    }
}
