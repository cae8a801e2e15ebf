//! The create quota: ACI allows a number of creates per window, and [`CreateLimiter`]
//! holds one token per allowed create in each. A token comes back one window after its PUT
//! was answered, so no window of ARM's clock sees more creates than the quota; a create
//! waits in line for at most `max_wait`, else it is told when the next token comes back.

use crate::runtime::lock;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant as TokioInstant;

/// The create quota: at most `limit` creates in any `period`, for each window
/// (`--aci-create-quota 100/5m,300/1h`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateQuota {
    pub windows: Vec<QuotaWindow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaWindow {
    pub limit: u32,
    pub period: Duration,
}

impl std::fmt::Display for QuotaWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.limit, humantime::format_duration(self.period))
    }
}

impl std::fmt::Display for CreateQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let windows: Vec<String> = self.windows.iter().map(ToString::to_string).collect();
        f.write_str(&windows.join(","))
    }
}

impl Default for CreateQuota {
    fn default() -> Self {
        CreateQuota {
            windows: vec![
                QuotaWindow {
                    limit: 100,
                    period: Duration::from_secs(300),
                },
                QuotaWindow {
                    limit: 300,
                    period: Duration::from_secs(3600),
                },
            ],
        }
    }
}

impl std::str::FromStr for CreateQuota {
    type Err = String;

    /// `N/DURATION[,N/DURATION...]`, e.g. `100/5m,300/1h` or `10/2s`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut windows = Vec::new();
        for part in text.split(',').map(str::trim) {
            let Some((limit, period)) = part.split_once('/') else {
                return Err(format!("{part:?} is not a quota; write COUNT/DURATION, e.g. 100/5m"));
            };
            let limit: u32 = limit
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: {limit:?} is not a whole number of creates"))?;
            let period = humantime::parse_duration(period.trim())
                .map_err(|_| format!("{part:?}: {period:?} is not a duration; write e.g. 5m or 1h"))?;
            if limit == 0 || period.is_zero() {
                return Err(format!(
                    "{part:?}: a quota must allow at least one create in a window longer than zero"
                ));
            }
            windows.push(QuotaWindow { limit, period });
        }
        Ok(CreateQuota { windows })
    }
}

/// The create token bucket: for each window one token per allowed create. A token is
/// taken before a PUT and comes back one period after the PUT was answered (or abandoned),
/// so that at most `limit` creates reach ARM in any period of its clock: the next create
/// leaves after the previous answer came back, hence after ARM counted it.
pub struct CreateLimiter {
    state: std::sync::Mutex<LimiterState>,
    /// Woken when a create in flight ends, which may make a token's return time known.
    changed: Notify,
    /// Waiting creates take their turn in order (tokio's mutex is fair).
    line: tokio::sync::Mutex<()>,
}

struct LimiterState {
    windows: Vec<WindowState>,
    next_ticket: u64,
}

struct WindowState {
    quota: QuotaWindow,
    /// Spent tokens: the ticket that spent it, and when it comes back (`None` while its
    /// create is in flight).
    spent: VecDeque<(u64, Option<TokioInstant>)>,
}

/// What stands between a create and its token.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    Now,
    Until(TokioInstant),
    /// Every token of some window is held by a create in flight.
    InFlight,
}

impl LimiterState {
    fn purge(&mut self, now: TokioInstant) {
        for window in &mut self.windows {
            window.spent.retain(|(_, back)| back.is_none_or(|back| back > now));
        }
    }

    fn wait(&self) -> Wait {
        let mut until: Option<TokioInstant> = None;
        for window in &self.windows {
            let held = window.spent.len();
            let limit = window.quota.limit as usize;
            if held < limit {
                continue;
            }
            // This many must come back before one is free.
            let needed = held - limit + 1;
            let mut known: Vec<TokioInstant> = window.spent.iter().filter_map(|(_, back)| *back).collect();
            if known.len() < needed {
                return Wait::InFlight;
            }
            known.sort();
            let at = known[needed - 1];
            until = Some(until.map_or(at, |u| u.max(at)));
        }
        until.map_or(Wait::Now, Wait::Until)
    }
}

impl CreateLimiter {
    pub fn new(quota: &CreateQuota) -> Self {
        CreateLimiter {
            state: std::sync::Mutex::new(LimiterState {
                windows: quota
                    .windows
                    .iter()
                    .map(|quota| WindowState {
                        quota: *quota,
                        spent: VecDeque::new(),
                    })
                    .collect(),
                next_ticket: 0,
            }),
            changed: Notify::new(),
            line: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes a token, waiting in line for at most `max_wait`. `Err` says how long the
    /// wait would have been, when known.
    pub async fn acquire(self: &Arc<Self>, max_wait: Duration) -> Result<CreateTicket, QuotaExhausted> {
        let deadline = TokioInstant::now() + max_wait;
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.line.lock()).await else {
            return Err(QuotaExhausted {
                next_in: None,
                quota: self.describe(),
            });
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut state = lock(&self.state);
                state.purge(TokioInstant::now());
                let wait = state.wait();
                if wait == Wait::Now {
                    let ticket = state.next_ticket;
                    state.next_ticket += 1;
                    for window in &mut state.windows {
                        window.spent.push_back((ticket, None));
                    }
                    return Ok(CreateTicket {
                        limiter: self.clone(),
                        ticket,
                    });
                }
                wait
            };
            match wait {
                // (Taken above.)
                Wait::Now => continue,
                Wait::Until(at) => {
                    if at > deadline {
                        return Err(QuotaExhausted {
                            next_in: Some(at.saturating_duration_since(TokioInstant::now())),
                            quota: self.describe(),
                        });
                    }
                    tokio::time::sleep_until(at).await;
                }
                Wait::InFlight => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(QuotaExhausted { next_in: None, quota: self.describe() });
                        }
                    }
                }
            }
        }
    }

    /// Tokens free now, per window.
    pub fn available(&self) -> Vec<(String, u32)> {
        let mut state = lock(&self.state);
        state.purge(TokioInstant::now());
        state
            .windows
            .iter()
            .map(|w| {
                let held = u32::try_from(w.spent.len()).unwrap_or(u32::MAX);
                (w.quota.to_string(), w.quota.limit.saturating_sub(held))
            })
            .collect()
    }

    fn describe(&self) -> String {
        let state = lock(&self.state);
        let windows: Vec<String> = state.windows.iter().map(|w| w.quota.to_string()).collect();
        windows.join(",")
    }

    fn finish(&self, ticket: u64) {
        let now = TokioInstant::now();
        {
            let mut state = lock(&self.state);
            for window in &mut state.windows {
                let back = now + window.quota.period;
                for spent in window.spent.iter_mut().filter(|(t, _)| *t == ticket) {
                    spent.1 = Some(back);
                }
            }
        }
        self.changed.notify_waiters();
    }
}

/// A create token, held while the create is in flight. Dropping it starts the token's
/// way back (one period from now), also when the create failed or was abandoned: ARM may
/// have counted it all the same.
pub struct CreateTicket {
    limiter: Arc<CreateLimiter>,
    ticket: u64,
}

impl Drop for CreateTicket {
    fn drop(&mut self) {
        self.limiter.finish(self.ticket);
    }
}

#[derive(Debug)]
pub struct QuotaExhausted {
    pub next_in: Option<Duration>,
    pub quota: String,
}

impl std::fmt::Display for QuotaExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.next_in {
            Some(next) => write!(
                f,
                "aci: the create quota ({}) allows the next create in {}; waiting for it",
                self.quota,
                humantime::format_duration(Duration::from_secs(next.as_secs() + 1))
            ),
            None => write!(
                f,
                "aci: the create quota ({}) is spent by creates in flight; waiting for a token",
                self.quota
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::aci::DEFAULT_CREATE_QUOTA;

    #[test]
    fn quotas_parse_and_print() {
        let quota: CreateQuota = DEFAULT_CREATE_QUOTA.parse().unwrap();
        assert_eq!(quota, CreateQuota::default());
        assert_eq!(quota.to_string(), "100/5m,300/1h");
        let quota: CreateQuota = "10/2s".parse().unwrap();
        assert_eq!(quota.windows[0].period, Duration::from_secs(2));
        for bad in ["", "10", "0/5m", "10/0s", "x/5m", "10/forever"] {
            assert!(bad.parse::<CreateQuota>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_gives_each_token_back_one_window_after_its_create_ended() {
        let quota: CreateQuota = "2/10s".parse().unwrap();
        let limiter = Arc::new(CreateLimiter::new(&quota));
        let a = limiter.acquire(Duration::ZERO).await.unwrap();
        let b = limiter.acquire(Duration::ZERO).await.unwrap();
        // Both in flight: the third waits for one of them to end.
        assert!(limiter.acquire(Duration::from_secs(1)).await.is_err());
        drop(a);
        let started = tokio::time::Instant::now();
        let waited = limiter.acquire(Duration::from_secs(60)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(10), "{:?}", started.elapsed());
        drop(b);
        drop(waited);
        // Too long a wait is an error that says how long.
        let err = match limiter.acquire(Duration::from_secs(1)).await {
            Err(err) => err,
            Ok(_) => panic!("a token came back too soon"),
        };
        assert!(err.next_in.is_some(), "{err}");
        assert!(err.to_string().contains("2/10s"), "{err}");
    }
}
