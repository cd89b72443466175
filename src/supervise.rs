//! Supervision of the long-lived actors (the allocator, the policy loader): a supervisor actor
//! restarts its child when it fails or stops unasked, at most [`MAX_RESTARTS`] times within
//! [`RESTART_WINDOW`]; past that it gives up, says so in an error log line, and the child's
//! [`Health`] turns readiness and liveness to 503, so that an orchestrator replaces the
//! process instead of it answering requests that can only time out.

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Restarts allowed within [`RESTART_WINDOW`] before the supervisor gives up.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// What the rest of the process knows of a supervised actor.
#[derive(Debug)]
pub struct Health {
    name: &'static str,
    restarts: AtomicU64,
    /// Set when the supervisor gave up: why the actor is gone for good.
    given_up: Mutex<Option<String>>,
    /// The running child, for diagnostics and tests.
    child: Mutex<Option<ActorCell>>,
}

impl Health {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            restarts: AtomicU64::new(0),
            given_up: Mutex::new(None),
            child: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// `Some(reason)` once the actor is gone for good.
    pub fn given_up(&self) -> Option<String> {
        self.given_up.lock().ok().and_then(|g| g.clone())
    }

    /// The running child actor (`None` while it is being restarted, or for good).
    pub fn child(&self) -> Option<ActorCell> {
        self.child.lock().ok().and_then(|c| c.clone())
    }

    fn set_child(&self, cell: Option<ActorCell>) {
        if let Ok(mut c) = self.child.lock() {
            *c = cell;
        }
    }
}

/// The supervisor of one child actor of type `A`.
pub struct Supervisor<A>(std::marker::PhantomData<A>);

pub struct Args<A: Actor> {
    child: A,
    args: A::Arguments,
    health: Arc<Health>,
}

pub struct State<A: Actor> {
    child: A,
    args: A::Arguments,
    health: Arc<Health>,
    restarts: VecDeque<Instant>,
}

/// Starts `child` with `args` under a supervisor named `name` in logs. Returns the
/// supervisor's cell and task (stopping it stops the child) and the child's [`Health`].
pub async fn start<A>(
    name: &'static str,
    child: A,
    args: A::Arguments,
) -> Result<(ActorCell, tokio::task::JoinHandle<()>, Arc<Health>), ractor::SpawnErr>
where
    A: Actor + Clone + Sync,
    A::Arguments: Clone + Sync,
{
    let health = Health::new(name);
    let (sup, handle) = Actor::spawn(
        None,
        Supervisor::<A>(std::marker::PhantomData),
        Args {
            child,
            args,
            health: Arc::clone(&health),
        },
    )
    .await?;
    Ok((sup.get_cell(), handle, health))
}

impl<A> Actor for Supervisor<A>
where
    A: Actor + Clone + Sync,
    A::Arguments: Clone + Sync,
{
    type Msg = ();
    type State = State<A>;
    type Arguments = Args<A>;

    async fn pre_start(
        &self,
        me: ActorRef<()>,
        a: Args<A>,
    ) -> Result<State<A>, ActorProcessingErr> {
        let (child, _) =
            Actor::spawn_linked(None, a.child.clone(), a.args.clone(), me.get_cell()).await?;
        a.health.set_child(Some(child.get_cell()));
        Ok(State {
            child: a.child,
            args: a.args,
            health: a.health,
            restarts: VecDeque::new(),
        })
    }

    async fn post_stop(
        &self,
        me: ActorRef<()>,
        st: &mut State<A>,
    ) -> Result<(), ActorProcessingErr> {
        st.health.set_child(None);
        me.stop_children_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<()>,
        event: SupervisionEvent,
        st: &mut State<A>,
    ) -> Result<(), ActorProcessingErr> {
        let why = match event {
            SupervisionEvent::ActorFailed(_, e) => format!("failed: {e}"),
            SupervisionEvent::ActorTerminated(_, _, reason) => {
                format!("stopped ({})", reason.as_deref().unwrap_or("no reason"))
            }
            _ => return Ok(()),
        };
        st.health.set_child(None);
        let now = Instant::now();
        while st
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            st.restarts.pop_front();
        }
        let name = st.health.name;
        if st.restarts.len() >= MAX_RESTARTS {
            let reason = format!(
                "the {name} actor {why}, after {MAX_RESTARTS} restarts within {RESTART_WINDOW:?}: \
                 not restarted again; this process must be restarted"
            );
            tracing::error!("{reason}");
            if let Ok(mut g) = st.health.given_up.lock() {
                *g = Some(reason);
            }
            return Ok(());
        }
        st.restarts.push_back(now);
        tracing::error!(actor = name, "the {name} actor {why}; restarting it");
        match Actor::spawn_linked(None, st.child.clone(), st.args.clone(), me.get_cell()).await {
            Ok((child, _)) => {
                st.health.restarts.fetch_add(1, Ordering::Relaxed);
                st.health.set_child(Some(child.get_cell()));
            }
            Err(e) => {
                let reason = format!("the {name} actor could not be restarted: {e}");
                tracing::error!("{reason}");
                if let Ok(mut g) = st.health.given_up.lock() {
                    *g = Some(reason);
                }
            }
        }
        Ok(())
    }
}
