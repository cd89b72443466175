//! A client connected on first use, and again on the next use after it broke: the one pattern
//! behind every Redis and PostgreSQL connection trackd holds, so that trackd starts (not
//! ready) while a store is down and reconnects by itself once it is back.

use std::future::Future;
use tokio::sync::{Mutex, MutexGuard};

/// Whether a connection can no longer be used (then the next use reconnects).
pub trait Connection: Send {
    fn is_broken(&self) -> bool {
        false
    }
}

impl Connection for tokio_postgres::Client {
    fn is_broken(&self) -> bool {
        self.is_closed()
    }
}

/// One connection, used by one caller at a time.
pub struct Lazy<C> {
    slot: Mutex<Option<C>>,
}

impl<C: Connection> Default for Lazy<C> {
    fn default() -> Self {
        Self {
            slot: Mutex::new(None),
        }
    }
}

/// The slot in a caller's hands: connected on demand, dropped with [`Slot::reset`] after an
/// error that may have left it unusable.
pub struct Slot<'a, C> {
    guard: MutexGuard<'a, Option<C>>,
}

impl<C: Connection> Lazy<C> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for the connection to be free.
    pub async fn lock(&self) -> Slot<'_, C> {
        Slot {
            guard: self.slot.lock().await,
        }
    }

    /// The connection if nobody is using it.
    pub fn try_lock(&self) -> Option<Slot<'_, C>> {
        self.slot.try_lock().ok().map(|guard| Slot { guard })
    }

    /// Drops the connection unless it is in use (after a caller gave up on a call that may
    /// have wedged it).
    pub fn reset_if_idle(&self) {
        if let Some(mut s) = self.try_lock() {
            s.reset();
        }
    }
}

/// A free connection of `pool`, or else the turn of the one `next` points at (advanced on
/// each wait, so that waiters spread over the pool instead of all queueing on the first).
pub async fn any_of<'a, C: Connection>(
    pool: &'a [Lazy<C>],
    next: &std::sync::atomic::AtomicUsize,
) -> Slot<'a, C> {
    if let Some(s) = pool.iter().find_map(Lazy::try_lock) {
        return s;
    }
    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % pool.len();
    pool[i].lock().await
}

impl<C: Connection> Slot<'_, C> {
    /// The connection, connecting with `connect` first if there is none or it broke.
    pub async fn get<E, F, Fut>(&mut self, connect: F) -> Result<&mut C, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        if self.guard.as_ref().is_none_or(C::is_broken) {
            *self.guard = None;
            *self.guard = Some(connect().await?);
        }
        Ok(self.guard.as_mut().expect("connected above"))
    }

    /// Forgets the connection: the next use connects anew.
    pub fn reset(&mut self) {
        *self.guard = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        id: u32,
        broken: bool,
    }
    impl Connection for Fake {
        fn is_broken(&self) -> bool {
            self.broken
        }
    }

    #[tokio::test]
    async fn connects_once_and_again_after_a_reset_or_a_break() {
        let lazy = Lazy::<Fake>::new();
        let mut made = 0;
        let mut connect = || {
            made += 1;
            let id = made;
            async move { Ok::<_, ()>(Fake { id, broken: false }) }
        };
        let mut s = lazy.lock().await;
        assert_eq!(s.get(&mut connect).await.unwrap().id, 1);
        assert_eq!(s.get(&mut connect).await.unwrap().id, 1, "kept");
        s.reset();
        assert_eq!(s.get(&mut connect).await.unwrap().id, 2);
        s.get(&mut connect).await.unwrap().broken = true;
        assert_eq!(
            s.get(&mut connect).await.unwrap().id,
            3,
            "a broken one is replaced"
        );
        assert!(lazy.try_lock().is_none(), "in use");
        drop(s);
        assert!(lazy.try_lock().is_some());
        let mut s = lazy.lock().await;
        let kept = s
            .get(|| async { Err::<Fake, _>("down") })
            .await
            .map(|c| c.id);
        assert_eq!(kept, Ok(3), "a live connection needs no connect");
        s.reset();
        let down = s
            .get(|| async { Err::<Fake, _>("down") })
            .await
            .map(|c| c.id);
        assert_eq!(down, Err("down"));
    }
}
