//! Slows repeated wrong admin keys from one address: after `FREE_FAILURES` wrong
//! keys, the address waits 1 s before its next attempt is even checked, then 2 s,
//! 4 s … up to `MAX_WAIT`; an attempt during the wait is refused (429 with
//! `Retry-After`) without looking at the key, so it tells nothing. A right key resets
//! the address. The map is bounded: entries are forgotten `FORGET_AFTER` their last
//! failure, and when `MAX_ADDRESSES` are tracked the stalest one makes room.
//!
//! The address is the TCP peer: behind a reverse proxy every client shares the
//! proxy's address (and its wait).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FREE_FAILURES: u32 = 5;
const MAX_WAIT: Duration = Duration::from_secs(60);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
const MAX_ADDRESSES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    wait_until: Option<Instant>,
}

#[derive(Default)]
pub struct LoginThrottle {
    addresses: Mutex<HashMap<IpAddr, Failures>>,
}

impl LoginThrottle {
    /// `Err(wait)` while `ip` must wait before its next attempt.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let map = self.addresses.lock().unwrap();
        match map.get(&ip).and_then(|f| f.wait_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// A wrong key from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.addresses.lock().unwrap();
        if !map.contains_key(&ip) && map.len() >= MAX_ADDRESSES {
            map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if map.len() >= MAX_ADDRESSES {
                if let Some(stalest) = map.iter().min_by_key(|(_, f)| f.last).map(|(ip, _)| *ip) {
                    map.remove(&stalest);
                }
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
            wait_until: None,
        });
        if now.duration_since(f.last) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        if f.count >= FREE_FAILURES {
            let doublings = (f.count - FREE_FAILURES).min(6);
            f.wait_until = Some(now + Duration::from_secs(1 << doublings).min(MAX_WAIT));
        }
    }

    /// The right key from `ip`.
    pub fn succeeded(&self, ip: IpAddr) {
        self.addresses.lock().unwrap().remove(&ip);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.addresses.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_free_failures_and_a_success_resets() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let now = Instant::now();
        for _ in 1..FREE_FAILURES {
            t.failed(ip, now);
            assert_eq!(t.check(ip, now), Ok(()));
        }
        t.failed(ip, now);
        assert_eq!(t.check(ip, now), Err(Duration::from_secs(1)));
        assert_eq!(t.check(other, now), Ok(()), "another address is not slowed");
        let later = now + Duration::from_secs(1);
        assert_eq!(t.check(ip, later), Ok(()));
        t.failed(ip, later);
        assert_eq!(t.check(ip, later), Err(Duration::from_secs(2)));
        for _ in 0..20 {
            t.failed(ip, later);
        }
        assert_eq!(t.check(ip, later), Err(MAX_WAIT));
        t.succeeded(ip);
        assert_eq!(t.check(ip, later), Ok(()));
    }

    #[test]
    fn the_map_stays_bounded() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            t.failed(IpAddr::from(i.to_be_bytes()), now + Duration::from_millis(i as u64));
        }
        assert_eq!(t.tracked(), MAX_ADDRESSES);
    }
}
