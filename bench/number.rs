//! Criterion micro-benchmarks of trackd's per-request hot path: number encoding, the keyed
//! permutation, the check character, query parsing and order validation, the JSON success body,
//! the per-request observation (metrics, request id, access-log callsite), and taking a
//! sequence number from the allocator compared with the designs it avoided (an actor `call`,
//! a channel round trip) and with a bare atomic increment.
//!
//! Run with `cargo bench --bench number` or `bench/run micro` (which also prints a summary).
//! Each benchmark measures for 3 s after a 1 s warm-up, so the whole set takes about a minute.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use trackd::support::form;
use trackd::tracking::TrackingService;
use trackd::tracking::allocator::{Allocator, BlockSizing};
use trackd::tracking::country::CountryCode;
use trackd::tracking::number::{self, CODE_SPACE, TrackingNumber};
use trackd::tracking::order::{Order, OrderFields};
use trackd::tracking::permute::{Permutation, PermutationKey};
use trackd::tracking::store::embedded::EmbeddedStore;

const KEY: PermutationKey = PermutationKey(*b"bench-permut-key");

/// A realistic query string, as `bench/tracking.lua` sends them.
const QUERY: &str = "origin_country_id=my&destination_country_id=ID&weight=1.234\
    &created_at=2018-11-20T19:29:32%2B08:00&customer_id=de619854-b59b-425e-9db4-943979e1bd49\
    &customer_name=RedBox%20Logistics+Sdn+Bhd&customer_slug=redbox-logistics";

/// Country pairs cycled through by the encoding benchmarks.
const PAIRS: [(&str, &str); 4] = [("MY", "ID"), ("SG", "US"), ("GB", "DE"), ("JP", "AU")];

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

/// The multi-thread runtime trackd would have on this 2-core machine.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn pairs() -> Vec<(CountryCode, CountryCode)> {
    PAIRS
        .iter()
        .map(|(o, d)| {
            (
                CountryCode::parse(o).unwrap(),
                CountryCode::parse(d).unwrap(),
            )
        })
        .collect()
}

/// Encoding: base36, country prefix and check character.
fn encoding(c: &mut Criterion) {
    let pairs = pairs();
    let p = Permutation::new(&KEY);
    let mut g = c.benchmark_group("number");

    let mut code = 0u64;
    let mut i = 0usize;
    g.bench_function("tracking_number_new", |b| {
        b.iter(|| {
            // Codes spread over the whole space (the permutation's outputs look like this).
            code = (code + 0x9E37_79B9_7F4A_7C15 % CODE_SPACE) % CODE_SPACE;
            i = (i + 1) & 3;
            let (o, d) = pairs[i];
            TrackingNumber::new(black_box(o), black_box(d), black_box(code))
        })
    });

    // Consecutive sequence numbers, as the allocator hands them out; cycle-walking makes the
    // cost vary (1.095 passes of the network on average), so the mean is over many inputs.
    let mut seq = 1_000_000u64;
    g.bench_function("permute", |b| {
        b.iter(|| {
            seq += 1;
            p.permute(black_box(seq))
        })
    });

    let samples: Vec<[u8; 15]> = (0..64u64)
        .map(|k| {
            let (o, d) = pairs[k as usize & 3];
            let n = TrackingNumber::new(o, d, p.permute(k));
            n.as_str().as_bytes()[..15].try_into().unwrap()
        })
        .collect();
    let mut j = 0usize;
    g.bench_function("check_char", |b| {
        b.iter(|| {
            j = (j + 1) & 63;
            number::check_char(black_box(&samples[j]))
        })
    });
    g.finish();
}

fn parse_order(query: &str) -> Option<Order> {
    Order::try_from(OrderFields::from_pairs(form::pairs(Some(query)))).ok()
}

/// Request handling outside hyper: query decoding, validation, the 201 body.
fn request(c: &mut Criterion) {
    let mut g = c.benchmark_group("request");
    g.bench_function("query_parse", |b| {
        b.iter(|| OrderFields::from_pairs(form::pairs(Some(black_box(QUERY)))))
    });
    g.bench_function("order_from_query", |b| {
        b.iter(|| parse_order(black_box(QUERY)).is_some())
    });
    let order = parse_order(QUERY).expect("valid query");
    let issued = trackd::tracking::Issued {
        seq: 1,
        number: TrackingNumber::new(order.origin, order.destination, 123_456_789),
        issued_at: time::OffsetDateTime::now_utc(),
    };
    g.bench_function("success_body", |b| {
        b.iter(|| trackd::issue::receipt::single(black_box(&order), black_box(&issued)))
    });
    // What observing a request adds (route template, request id, two metric updates, the
    // access-log callsite disabled as in production at level info, the response header).
    let _handle = trackd::metrics::install();
    let http = trackd::metrics::HttpMetrics::new(trackd::http::route::TEMPLATES);
    let (req, ()) = hyper::Request::get(format!("/api/next-tracking-number/?{QUERY}"))
        .body(())
        .unwrap()
        .into_parts();
    let mut resp = hyper::Response::new(());
    *resp.status_mut() = hyper::StatusCode::CREATED;
    g.bench_function("observe_request", |b| {
        b.iter(|| {
            let route = trackd::http::route::Route::parse(req.uri.path());
            let o = trackd::http::observe::Observation::start(black_box(&req), route);
            o.finish(&http, &mut resp);
        })
    });
    g.finish();
}

/// A temporary data directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("trackd-bench-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // trackd refuses a data directory that other users can read.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("temp dir mode");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Blocks large enough that the store (an fsync per block) is rarely on the measured path.
const BIG_BLOCK: u64 = 1 << 24;

async fn start_allocator(dir: &TempDir) -> (Allocator, ractor::ActorCell) {
    let store = EmbeddedStore::open(&dir.0).expect("embedded store");
    let sizing = BlockSizing {
        min: BIG_BLOCK,
        max: BIG_BLOCK,
        target: Duration::from_secs(1),
    };
    let (alloc, cell, _handle) = Allocator::start(Arc::new(store), sizing)
        .await
        .expect("allocator actor");
    // Wait for the first block.
    let _ = alloc
        .take(Duration::from_secs(10))
        .await
        .expect("first block");
    (alloc, cell)
}

/// The design that was avoided: every number is a `call` to an actor holding the counter.
mod counter_actor {
    use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

    pub struct Counter;

    pub enum Msg {
        Next(RpcReplyPort<u64>),
    }

    impl Actor for Counter {
        type Msg = Msg;
        type State = u64;
        type Arguments = ();

        async fn pre_start(
            &self,
            _me: ActorRef<Msg>,
            _args: (),
        ) -> Result<u64, ActorProcessingErr> {
            Ok(0)
        }

        async fn handle(
            &self,
            _me: ActorRef<Msg>,
            msg: Msg,
            next: &mut u64,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                Msg::Next(reply) => {
                    *next += 1;
                    let _ = reply.send(*next);
                }
            }
            Ok(())
        }
    }
}

/// Taking one sequence number, four ways. The round trips run in a task on the runtime (as a
/// request handler would) and talk to a task or actor on the same 2-worker runtime.
fn take(c: &mut Criterion) {
    let rt = runtime();
    let dir = TempDir::new("alloc");
    let (alloc, alloc_cell) = rt.block_on(start_allocator(&dir));
    let mut g = c.benchmark_group("take");

    // (a) trackd's hot path: an ArcSwap load and a fetch_add on the current block.
    g.bench_function("allocator_try_take", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let seq = match alloc.try_take() {
                    Some(seq) => seq,
                    // Block ran out before the standby was ready: wait, and count the wait.
                    None => rt
                        .block_on(alloc.take(Duration::from_secs(10)))
                        .expect("allocator"),
                };
                black_box(seq);
            }
            start.elapsed()
        })
    });

    // (b) a ractor `call` round trip to an actor handing out a counter.
    let (actor, actor_handle) = rt
        .block_on(ractor::Actor::spawn(None, counter_actor::Counter, ()))
        .expect("counter actor");
    g.bench_function("ractor_call", |b| {
        b.iter_custom(|iters| {
            let actor = actor.clone();
            rt.block_on(async move {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let n = ractor::call_t!(actor, counter_actor::Msg::Next, 1000)
                            .expect("counter actor answers");
                        black_box(n);
                    }
                    start.elapsed()
                })
                .await
                .expect("bench task")
            })
        })
    });

    // (c) a tokio mpsc request carrying a oneshot reply channel, to a counter task.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<u64>>(1024);
    let counter_task = rt.spawn(async move {
        let mut next = 0u64;
        while let Some(reply) = rx.recv().await {
            next += 1;
            let _ = reply.send(next);
        }
    });
    g.bench_function("mpsc_oneshot", |b| {
        b.iter_custom(|iters| {
            let tx = tx.clone();
            rt.block_on(async move {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let (reply, answer) = tokio::sync::oneshot::channel();
                        tx.send(reply).await.expect("counter task alive");
                        black_box(answer.await.expect("counter task answers"));
                    }
                    start.elapsed()
                })
                .await
                .expect("bench task")
            })
        })
    });

    // (d) the floor: one uncontended atomic increment.
    let counter = AtomicU64::new(0);
    g.bench_function("atomic_fetch_add", |b| {
        b.iter(|| counter.fetch_add(1, Ordering::Relaxed))
    });
    g.finish();

    // The whole issue step of a request (take + permute + encode + timestamp), minus HTTP.
    let service = TrackingService::new(
        alloc.clone(),
        Permutation::new(&KEY),
        Duration::from_secs(1),
    );
    let order = parse_order(QUERY).expect("valid query");
    let mut g = c.benchmark_group("service");
    g.bench_function("issue", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(service.issue(&order).await.expect("issued"));
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    drop(tx);
    actor.stop(None);
    alloc_cell.stop(None);
    rt.block_on(async {
        let _ = counter_task.await;
        let _ = actor_handle.await;
    });
    drop(rt);
    drop(dir);
}

criterion_group! {
    name = benches;
    config = config();
    targets = encoding, request, take
}
criterion_main!(benches);
