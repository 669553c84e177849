use std::num::NonZeroU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

fn config(limits: &str, balance: &str) -> Arc<Config> {
    let toml = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[[providers]]
name = "p"
base_url = "http://127.0.0.1:9/v1"
[[models]]
name = "m"
provider = "p"
[[models]]
name = "n"
provider = "p"
[[consumers]]
name = "c"
keys = [{{ sha256 = "{}" }}]
{balance}
limits = {{ {limits} }}
model_limits = {{ "n" = {{ requests_per_minute = 2 }} }}
"#,
        "ab".repeat(32)
    );
    Arc::new(Config::from_toml_str(&toml).unwrap())
}

fn ask(tokens: u64) -> Ask {
    Ask {
        tokens,
        balance_tokens: tokens,
        cost_micros: 0,
    }
}

fn actual(tokens: u64) -> Actual {
    Actual {
        tokens,
        balance_tokens: tokens,
        prompt_tokens: tokens,
        ..Actual::default()
    }
}

#[test]
fn reservations_never_overshoot_and_settlement_refunds() {
    let e = Engine::new(config("tokens_per_minute = 1000", ""));
    let a = e.admit(0, 0, ask(600)).unwrap();
    let refused = e.admit(0, 0, ask(600)).unwrap_err();
    assert_eq!(refused.limit, Limit::TokensPerMinute);
    assert!(refused.retry_after_ns > 0);
    // Only 100 were used: 500 come back and the next request fits.
    e.settle(a, actual(100));
    let b = e.admit(0, 0, ask(600)).unwrap();
    e.settle(b, actual(600));
    let h = e.headroom(0, 0);
    let (limit, remaining, _) = h.tokens.unwrap();
    assert_eq!(limit, 1000);
    assert!((299..=300).contains(&remaining), "{remaining}");
    let usage = &e.consumers[0].usage[0];
    assert_eq!(usage.requests.load(Ordering::Relaxed), 2);
    assert_eq!(usage.prompt_tokens.load(Ordering::Relaxed), 700);
}

#[test]
fn a_refusal_by_the_model_limit_rolls_back_the_consumer_limits() {
    let e = Engine::new(config(
        "requests_per_minute = 100, concurrent_requests = 5",
        "",
    ));
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(e.admit(0, 1, ask(1)).unwrap());
    }
    let refused = e.admit(0, 1, ask(1)).unwrap_err();
    assert_eq!(refused.limit, Limit::RequestsPerMinute);
    let cells = &e.consumers[0].cells;
    assert_eq!(
        cells.concurrent.as_ref().unwrap().current(),
        2,
        "the refused request left nothing held"
    );
    assert_eq!(cells.rpm.as_ref().unwrap().remaining(e.now()), 98);
    // Model m has no model limit of its own.
    held.push(e.admit(0, 0, ask(1)).unwrap());
    assert_eq!(
        e.consumers[0].cells.concurrent.as_ref().unwrap().current(),
        3
    );
    for r in held {
        e.settle(r, actual(1));
    }
    assert_eq!(
        e.consumers[0].cells.concurrent.as_ref().unwrap().current(),
        0
    );
}

#[test]
fn concurrency_limit() {
    let e = Engine::new(config("concurrent_requests = 1", ""));
    let a = e.admit(0, 0, ask(1)).unwrap();
    assert_eq!(
        e.admit(0, 0, ask(1)).unwrap_err().limit,
        Limit::ConcurrentRequests
    );
    e.settle(a, actual(1));
    let b = e.admit(0, 0, ask(1)).unwrap();
    e.settle(b, actual(1));
}

#[test]
fn balance_runs_down_to_refusal_and_may_dip_one_request_deep() {
    let e = Engine::new(config("", "balance = 1000"));
    let a = e.admit(0, 0, ask(800)).unwrap();
    e.settle(a, actual(900));
    let b = e.admit(0, 0, ask(800)).unwrap();
    e.settle(b, actual(300));
    let balance = e.consumers[0].balance.as_ref().unwrap();
    assert_eq!(balance.get(), -200);
    let refused = e.admit(0, 0, ask(1)).unwrap_err();
    assert_eq!(refused.limit, Limit::Balance);
    assert!(refused.limit.is_quota());
    balance.add(1000);
    let c = e.admit(0, 0, ask(10)).unwrap();
    e.settle(c, actual(10));
    assert_eq!(balance.get(), 790);
}

#[test]
fn budget_refuses_until_the_next_window() {
    let e = Engine::new(config("budget_per_day = 1.0", ""));
    let a = e
        .admit(
            0,
            0,
            Ask {
                tokens: 1,
                balance_tokens: 1,
                cost_micros: 700_000,
            },
        )
        .unwrap();
    e.settle(
        a,
        Actual {
            cost_micros: 900_000,
            ..actual(1)
        },
    );
    let refused = e
        .admit(
            0,
            0,
            Ask {
                tokens: 1,
                balance_tokens: 1,
                cost_micros: 200_000,
            },
        )
        .unwrap_err();
    assert_eq!(refused.limit, Limit::BudgetPerDay);
    assert!(refused.retry_after_ns <= 86400 * SEC);
    assert_eq!(
        e.consumers[0].usage[0].cost_micros.load(Ordering::Relaxed),
        900_000
    );
}

#[test]
fn concurrent_admission_from_many_threads_is_exact() {
    let e = Arc::new(Engine::new(config("tokens_per_minute = 10000", "")));
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let e = e.clone();
            let admitted = admitted.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if let Admit::Admitted(r) = e.admit(0, 0, ask(70)) {
                        admitted.fetch_add(70, Ordering::Relaxed);
                        e.settle(r, actual(70));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 10,000 per minute, plus what refilled while the test ran (well under a second).
    let got = admitted.load(Ordering::Relaxed);
    assert!(got <= 10_000 + 70 * 2, "admitted {got}");
    assert!(got >= 9_900, "admitted {got}");
}

#[test]
fn calendar_windows() {
    // 2026-11-26T12:00:00Z
    let t = UNIX_EPOCH + Duration::from_secs(1_795_694_400);
    let w = Windows::at(t);
    assert_eq!(w.day, 1_795_694_400 / 86400);
    assert_eq!(w.month, 2026 * 12 + 10);
    assert_eq!(w.next_day_ns, 12 * 3600 * SEC);
    // December 1st is 4.5 days away.
    assert_eq!(w.next_month_ns, (4 * 86400 + 12 * 3600) * SEC);
    assert_eq!(civil_from_days(0), (1970, 1));
    assert_eq!(days_from_civil(2000, 3), 11_017);
    assert_eq!(
        civil_from_days(days_from_civil(2024, 2) + 28),
        (2024, 2),
        "leap day"
    );
    let _ = SystemTime::now();
    let _ = NonZeroU64::MIN;
}

impl Admit {
    fn unwrap(self) -> Reservation {
        match self {
            Admit::Admitted(r) => r,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    fn unwrap_err(self) -> Refusal {
        match self {
            Admit::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

fn cluster_config() -> Arc<Config> {
    let toml = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[[providers]]
name = "p"
base_url = "http://127.0.0.1:9/v1"
[[models]]
name = "m"
provider = "p"
[[consumers]]
name = "c"
keys = [{{ sha256 = "{}" }}]
balance = 500
limits = {{ tokens_per_minute = 1000, requests_per_minute = 100 }}
[cluster]
redis = "redis://127.0.0.1:9/0"
node_id = "t"
"#,
        "cd".repeat(32)
    );
    Arc::new(Config::from_toml_str(&toml).unwrap())
}

#[test]
fn cluster_mode_spends_leases_and_asks_for_what_is_missing() {
    let e = Engine::new(cluster_config());
    assert_eq!(e.mode(), Mode::Cluster);
    let needs = match e.admit(0, 0, ask(100)) {
        Admit::Lease(needs) => needs,
        other => panic!("expected a lease request, got {other:?}"),
    };
    let limits: Vec<Limit> = needs.iter().map(|n| n.limit).collect();
    assert_eq!(
        limits,
        vec![Limit::RequestsPerMinute, Limit::TokensPerMinute]
    );
    assert_eq!(needs[1].units, 100);
    // Nothing is held after a shortfall.
    assert_eq!(e.consumers[0].cells.leases[2].allowance(), 0);
    for n in &needs {
        e.credit(n, n.units.max(50), 1_000_000_000);
    }
    // The balance is leased only once the limits are covered.
    let needs = match e.admit(0, 0, ask(100)) {
        Admit::Lease(needs) => needs,
        other => panic!("expected a balance lease, got {other:?}"),
    };
    assert_eq!(needs[0].limit, Limit::Balance);
    e.credit(&needs[0], 100, 1_000_000_000);
    let r = e.admit(0, 0, ask(100)).unwrap();
    // 40 of the 100 reserved tokens come back to the lease.
    e.settle(r, actual(60));
    assert_eq!(e.consumers[0].cells.leases[2].allowance(), 40);
    assert_eq!(e.consumers[0].balance_lease.allowance(), 40);
    // Redis unreachable: fail-open falls back to the local limits.
    assert!(e.set_redis_up(false));
    assert_eq!(e.mode(), Mode::LocalOnly);
    let r = e.admit(0, 0, ask(100)).unwrap();
    e.settle(r, actual(100));
    assert!(e.set_redis_up(true));
    assert!(!e.set_redis_up(true), "no change the second time");
}

#[test]
fn lapsed_leases_are_reclaimed_once() {
    let lease = Lease::default();
    lease.credit(70, 5);
    assert_eq!(lease.reclaim(4), 0, "not lapsed yet");
    assert_eq!(lease.reclaim(6), 70);
    assert_eq!(lease.reclaim(7), 0);
    lease.adjust(-10);
    assert_eq!(lease.shortfall(5), 15);
    assert_eq!(lease.reclaim_all(), -10, "a debt is settled too");
    assert_eq!(lease.allowance(), 0);
}
