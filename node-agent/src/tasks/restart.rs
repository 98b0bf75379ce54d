//! Whether and when a task's exited container starts again, decided on the
//! node with no round trip to the control plane: policy `always` (the
//! default), `on-failure` or `never`; the first restart at once, then
//! exponential backoff from 100 ms to a 30 s cap; a run of 10 s or more
//! starts the count over.

use std::time::Duration;

use berth_proto::model::RestartPolicy;

use crate::runtime::Exited;

pub const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run at least this long resets the backoff.
pub const STEADY: Duration = Duration::from_secs(10);

/// Whether the policy restarts a container that ended like this.
pub fn wanted(policy: RestartPolicy, exit: &Exited) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit.code != 0 || exit.oom_killed || exit.error.is_some(),
        RestartPolicy::Never => false,
    }
}

/// Restarts in a row, counting the one about to happen, after a run of
/// `ran_for`: a steady run makes this one the first again.
pub fn streak_after(streak: u32, ran_for: Duration) -> u32 {
    if ran_for >= STEADY {
        1
    } else {
        streak.saturating_add(1)
    }
}

/// How long to wait before restarting, `streak` being the restarts in a
/// row so far (the one about to happen not counted): 0, 100 ms, 200 ms,
/// 400 ms, … up to 30 s.
pub fn delay(streak: u32) -> Duration {
    match streak {
        0 => Duration::ZERO,
        n => FIRST_DELAY.saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX)).min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32, oom_killed: bool) -> Exited {
        Exited { code, signal: None, oom_killed, finished_at_ms: 0, error: None }
    }

    #[test]
    fn policies() {
        for (policy, code, oom, want) in [
            (RestartPolicy::Always, 0, false, true),
            (RestartPolicy::Always, 1, false, true),
            (RestartPolicy::OnFailure, 0, false, false),
            (RestartPolicy::OnFailure, 3, false, true),
            (RestartPolicy::OnFailure, 0, true, true),
            (RestartPolicy::Never, 1, true, false),
        ] {
            assert_eq!(wanted(policy, &exit(code, oom)), want, "{policy} {code} {oom}");
        }
    }

    #[test]
    fn backoff_doubles_from_100ms_to_30s_and_a_steady_run_resets_it() {
        let ms: Vec<u128> = (0..12).map(|n| delay(n).as_millis()).collect();
        assert_eq!(ms, [0, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
        assert_eq!(streak_after(5, Duration::from_secs(2)), 6);
        assert_eq!(streak_after(5, Duration::from_secs(10)), 1);
    }
}
