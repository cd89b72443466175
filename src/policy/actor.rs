//! The cache loader actor: owns the slow, stateful work of keeping the snapshot current.
//! It loads at start, on every `NOTIFY trackd_policy` (debounced), on a fixed interval and,
//! after a failure, on a retry timer; a failed load keeps the last good snapshot. Request
//! handlers never message it: they read the published snapshot.

use super::PolicyCache;
use super::load::{self, LoadError};
use crate::support::backoff::Backoff;
use crate::support::pg;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The channel the migration's triggers notify.
pub const CHANNEL: &str = "trackd_policy";

/// What the loader needs (configuration only; state is built in `pre_start`).
#[derive(Clone)]
pub struct LoaderArgs {
    pub url: String,
    pub tls: crate::support::tls::Tls,
    pub cache: Arc<PolicyCache>,
    pub interval: Duration,
    pub debounce: Duration,
    pub retry: Duration,
    pub connect_timeout: Duration,
    pub load_timeout: Duration,
}

/// Why a load was asked for (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Start,
    Interval,
    Notify,
    Reconnect,
    Retry,
}

pub enum LoaderMsg {
    Refresh(Reason),
}

#[derive(Clone)]
pub struct LoaderActor;

pub struct LoaderState {
    args: LoaderArgs,
    /// Set by the listener when a refresh is queued; cleared when a load starts, so a burst
    /// of notifications during a load causes exactly one more load.
    queued: Arc<AtomicBool>,
    retry_armed: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl Actor for LoaderActor {
    type Msg = LoaderMsg;
    type State = LoaderState;
    type Arguments = LoaderArgs;

    async fn pre_start(
        &self,
        me: ActorRef<LoaderMsg>,
        args: LoaderArgs,
    ) -> Result<LoaderState, ActorProcessingErr> {
        let queued = Arc::new(AtomicBool::new(false));
        let listener = tokio::spawn(listen(args.clone(), me.clone(), Arc::clone(&queued)));
        let interval = me.send_interval(args.interval, || LoaderMsg::Refresh(Reason::Interval));
        me.cast(LoaderMsg::Refresh(Reason::Start))?;
        Ok(LoaderState {
            args,
            queued,
            retry_armed: false,
            tasks: vec![listener, interval],
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<LoaderMsg>,
        st: &mut LoaderState,
    ) -> Result<(), ActorProcessingErr> {
        for t in &st.tasks {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<LoaderMsg>,
        msg: LoaderMsg,
        st: &mut LoaderState,
    ) -> Result<(), ActorProcessingErr> {
        let LoaderMsg::Refresh(reason) = msg;
        if reason == Reason::Retry {
            st.retry_armed = false;
        }
        st.queued.store(false, Ordering::SeqCst);
        let started = Instant::now();
        let result = match tokio::time::timeout(
            st.args.load_timeout,
            load::load(&st.args.url, st.args.connect_timeout, &st.args.tls),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(LoadError::Task(format!(
                "load took longer than {:?}",
                st.args.load_timeout
            ))),
        };
        match result {
            Ok(snapshot) => {
                let elapsed = started.elapsed();
                let counts = snapshot.counts();
                st.args.cache.publish(snapshot, elapsed);
                tracing::info!(
                    ?reason,
                    users = counts.users,
                    policies = counts.policies,
                    categories = counts.categories,
                    user_policies = counts.user_policies,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "policy cache loaded"
                );
            }
            Err(e) => {
                st.args.cache.record_failure(&e.to_string());
                tracing::warn!(?reason, error = %e, "policy cache refresh failed; serving the last good snapshot");
                if !st.retry_armed {
                    st.retry_armed = true;
                    me.send_after(st.args.retry, || LoaderMsg::Refresh(Reason::Retry));
                }
            }
        }
        Ok(())
    }
}

/// Queues a refresh after the debounce delay unless one is already queued.
fn queue_refresh(me: &ActorRef<LoaderMsg>, queued: &AtomicBool, debounce: Duration, r: Reason) {
    if !queued.swap(true, Ordering::SeqCst) {
        let me = me.clone();
        tokio::spawn(async move {
            tokio::time::sleep(debounce).await;
            let _ = me.cast(LoaderMsg::Refresh(r));
        });
    }
}

/// Holds a `LISTEN trackd_policy` connection, reconnecting with backoff; every notification
/// queues a refresh, and so does every reconnection (notifications may have been missed).
async fn listen(args: LoaderArgs, me: ActorRef<LoaderMsg>, queued: Arc<AtomicBool>) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut first = true;
    loop {
        match listen_once(&args, &me, &queued, first).await {
            Ok(()) => backoff.reset(),
            Err(e) => tracing::debug!(error = %e, "policy LISTEN connection failed"),
        }
        first = false;
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn listen_once(
    args: &LoaderArgs,
    me: &ActorRef<LoaderMsg>,
    queued: &AtomicBool,
    first: bool,
) -> Result<(), String> {
    let (client, mut notifications) =
        pg::connect_listening(&args.url, args.connect_timeout, &args.tls)
            .await
            .map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| pg::message(&e))?;
    tracing::debug!("listening for policy changes");
    if !first {
        queue_refresh(me, queued, args.debounce, Reason::Reconnect);
    }
    while let Some(table) = notifications.recv().await {
        tracing::debug!(table, "policy change notified");
        queue_refresh(me, queued, args.debounce, Reason::Notify);
    }
    Ok(())
}
