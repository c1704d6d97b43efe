//! Rate limits (DESIGN §5): a GCRA per signed-in user on every user
//! endpoint, and per client IP on registration and login (each of which
//! costs an argon2id hash). Past the limit a request gets `429 rate_limited`
//! with `Retry-After`. In memory per replica: a client spreading requests
//! over N replicas gets up to N times the rate, which a load balancer with
//! sticky sessions or a shared limiter would close.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::LimitSettings;
use crate::domain::UserId;

/// A refused request: when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

/// The replica's limiters; a limit configured as 0 is off.
pub struct RateLimits {
    users: Option<DefaultKeyedRateLimiter<i64>>,
    ips: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

fn limiter<K: Clone + std::hash::Hash + Eq>(
    per_sec: u32,
    burst: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let per_sec = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_sec);
    Some(DefaultKeyedRateLimiter::keyed(
        Quota::per_second(per_sec).allow_burst(burst),
    ))
}

impl RateLimits {
    /// Limiters as `settings` say.
    pub fn new(settings: &LimitSettings) -> RateLimits {
        RateLimits {
            users: limiter(settings.user_per_sec, settings.user_burst),
            ips: limiter(settings.ip_per_sec, settings.ip_burst),
            clock: DefaultClock::default(),
        }
    }

    fn check<K: Clone + std::hash::Hash + Eq>(
        &self,
        limiter: &Option<DefaultKeyedRateLimiter<K>>,
        key: &K,
    ) -> Result<(), Limited> {
        match limiter.as_ref().map(|l| l.check_key(key)) {
            None | Some(Ok(())) => Ok(()),
            Some(Err(not_until)) => Err(Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
        }
    }

    /// One request by `user`.
    pub fn check_user(&self, user: UserId) -> Result<(), Limited> {
        self.check(&self.users, &user.0)
    }

    /// One registration or login attempt from `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Limited> {
        self.check(&self.ips, &ip)
    }

    /// Forgets keys whose limit has fully recovered (bounds memory).
    pub fn prune(&self) {
        if let Some(users) = &self.users {
            users.retain_recent();
            users.shrink_to_fit();
        }
        if let Some(ips) = &self.ips {
            ips.retain_recent();
            ips.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_sec: u32, burst: u32) -> LimitSettings {
        LimitSettings {
            user_per_sec: per_sec,
            user_burst: burst,
            ip_per_sec: per_sec,
            ip_burst: burst,
            trust_forwarded_for: false,
        }
    }

    #[test]
    fn a_user_gets_the_burst_then_waits_and_others_are_unaffected() {
        let limits = RateLimits::new(&settings(1, 3));
        for _ in 0..3 {
            assert!(limits.check_user(UserId(1)).is_ok());
        }
        let refused = limits.check_user(UserId(1)).unwrap_err();
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1)
        );
        assert!(limits.check_user(UserId(2)).is_ok());
    }

    #[test]
    fn a_zero_limit_is_off() {
        let limits = RateLimits::new(&settings(0, 0));
        assert!((0..1_000).all(|_| limits.check_user(UserId(1)).is_ok()));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!((0..1_000).all(|_| limits.check_ip(ip).is_ok()));
    }
}
