//! One task per sandbox owns it from its start to its end: it takes the
//! requests for it one at a time (stop, pause, anything else through
//! [`SandboxHandle::with`]), awaits its VM in between, and moves its
//! [`Lifecycle`] on each, telling a [`Watcher`] every new state. A VM that
//! ends without being asked (a guest power-off, reboot or panic, a VMM
//! crash, an OOM kill) is noticed as it happens: the sandbox stops with
//! that reason and everything it held is freed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hearth_proto::agent::InitRequest;
use hearth_vmm::VmExit;
use tokio::sync::{mpsc, oneshot, watch};

use crate::lifecycle::{Event, Lifecycle, State, StopReason};
use crate::{NodeError, PauseMode, Sandbox};

/// What the supervisor needs of a sandbox: [`Sandbox`], or a fake in tests.
pub trait Supervised: Send + 'static {
    /// Waits for the agent and hands it `init`; without one, only waits
    /// for it to answer.
    fn ready(
        &mut self,
        timeout: Duration,
        init: Option<InitRequest>,
    ) -> impl Future<Output = Result<(), NodeError>> + Send;
    /// Resolves when the VM has ended by itself. Cancel-safe.
    fn wait_exit(&mut self) -> impl Future<Output = Result<VmExit, NodeError>> + Send;
    /// Saves it (as `mode` says) to its directory and stops its VM; on
    /// failure the guest continues.
    fn pause(&mut self, mode: PauseMode) -> impl Future<Output = Result<(), NodeError>> + Send;
    /// Stops its VM and frees everything it holds.
    fn destroy(self) -> impl Future<Output = Result<(), NodeError>> + Send;
    /// Lets go of it, running, for a later process to take over.
    fn detach(self) -> impl Future<Output = Result<(), NodeError>> + Send;
}

impl Supervised for Sandbox {
    async fn ready(
        &mut self,
        timeout: Duration,
        init: Option<InitRequest>,
    ) -> Result<(), NodeError> {
        match init {
            Some(init) => self.wait_ready(timeout, init).await,
            None => self.wait_agent(timeout).await,
        }
    }

    fn wait_exit(&mut self) -> impl Future<Output = Result<VmExit, NodeError>> + Send {
        Sandbox::wait_exit(self)
    }

    fn pause(&mut self, mode: PauseMode) -> impl Future<Output = Result<(), NodeError>> + Send {
        Sandbox::pause(self, mode)
    }

    fn destroy(self) -> impl Future<Output = Result<(), NodeError>> + Send {
        Sandbox::destroy(self)
    }

    fn detach(self) -> impl Future<Output = Result<(), NodeError>> + Send {
        Sandbox::detach(self)
    }
}

/// Told of every state a sandbox enters, in order, before anyone waiting
/// on the request that caused it hears back: the place to persist it.
pub trait Watcher: Send + Sync + 'static {
    fn changed(&self, id: &str, lifecycle: &Lifecycle);
}

/// A [`Watcher`] that keeps nothing.
pub struct Unwatched;

impl Watcher for Unwatched {
    fn changed(&self, _: &str, _: &Lifecycle) {}
}

type Job<S> =
    Box<dyn for<'a> FnOnce(&'a mut S) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> + Send>;

enum Command<S> {
    Stop(StopReason, oneshot::Sender<Result<(), NodeError>>),
    Pause(PauseMode, oneshot::Sender<Result<(), NodeError>>),
    Detach(oneshot::Sender<Result<(), NodeError>>),
    With(Job<S>),
}

/// The way to a supervised sandbox. Cheap to clone; the sandbox stops
/// (reason [`StopReason::Killed`]) when the last handle is dropped.
pub struct SandboxHandle<S = Sandbox> {
    id: Arc<str>,
    commands: mpsc::Sender<Command<S>>,
    lifecycle: watch::Receiver<Lifecycle>,
}

impl<S> Clone for SandboxHandle<S> {
    fn clone(&self) -> Self {
        Self {
            id: Arc::clone(&self.id),
            commands: self.commands.clone(),
            lifecycle: self.lifecycle.clone(),
        }
    }
}

/// How a supervised sandbox came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Restored from a template snapshot (or forked).
    Created,
    /// Restored from its own paused state.
    Resumed,
    /// Left running by an earlier process and taken over
    /// ([`Sandbox::adopt`]); it starts again as far as its lifecycle goes.
    Adopted,
}

/// Takes `sandbox` over: waits for its agent (handing it `init`, if any:
/// an adopted sandbox's agent had its own), then supervises it. Returns
/// once the agent has answered; a sandbox that does not answer within
/// `timeout` is stopped and removed, with the reason.
pub async fn supervise<S: Supervised>(
    id: &str,
    mut sandbox: S,
    origin: Origin,
    timeout: Duration,
    init: Option<InitRequest>,
    watcher: Arc<dyn Watcher>,
) -> Result<SandboxHandle<S>, NodeError> {
    let mut lifecycle = match origin {
        Origin::Created | Origin::Adopted => Lifecycle::starting(),
        Origin::Resumed => {
            let mut paused = Lifecycle::paused();
            paused
                .apply(Event::Resume)
                .expect("a paused sandbox can resume");
            paused
        }
    };
    watcher.changed(id, &lifecycle);
    let (tx, rx) = mpsc::channel(16);
    if let Err(e) = sandbox.ready(timeout, init).await {
        let (state, _) = watch::channel(lifecycle);
        let _ = stop(
            id,
            sandbox,
            StopReason::Failed(e.to_string()),
            &state,
            &*watcher,
        )
        .await;
        return Err(e);
    }
    lifecycle
        .apply(Event::Ready)
        .expect("a starting or resuming sandbox can become ready");
    watcher.changed(id, &lifecycle);
    let (state, lifecycle) = watch::channel(lifecycle);
    let id: Arc<str> = Arc::from(id);
    tokio::spawn(run(Arc::clone(&id), sandbox, rx, state, watcher));
    Ok(SandboxHandle {
        id,
        commands: tx,
        lifecycle,
    })
}

impl<S: Supervised> SandboxHandle<S> {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its state now.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.borrow().clone()
    }

    /// Stops the sandbox for `reason` and frees everything it held. A
    /// sandbox that is stopped already is not an error.
    pub async fn stop(&self, reason: StopReason) -> Result<(), NodeError> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Stop(reason, reply))
            .await
            .is_err()
        {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }

    /// Saves the sandbox (as `mode` says) to its directory and stops its
    /// VM; its supervisor ends. On failure it keeps running.
    pub async fn pause(&self, mode: PauseMode) -> Result<(), NodeError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Pause(mode, reply))
            .await
            .map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Ends its supervision and leaves it running, for a later process to
    /// take over (a server that stops under running sandboxes). Its state
    /// does not change.
    pub async fn detach(&self) -> Result<(), NodeError> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Detach(reply)).await.is_err() {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }

    /// Runs `job` on the sandbox, between the other requests, and returns
    /// what it returns.
    pub async fn with<T, F>(&self, job: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut S) -> Pin<Box<dyn Future<Output = T> + Send + 'a>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job<S> = Box::new(move |sandbox| {
            Box::pin(async move {
                let _ = reply.send(job(sandbox).await);
            })
        });
        self.commands
            .send(Command::With(job))
            .await
            .map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())
    }

    /// Resolves once the sandbox is out of service: pausing, paused,
    /// stopping or stopped. What a request to it races against.
    pub fn out_of_service(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lifecycle = self.lifecycle.clone();
        async move {
            let _ = lifecycle
                .wait_for(|l| {
                    matches!(
                        l.state(),
                        State::Pausing | State::Paused | State::Stopping | State::Stopped
                    )
                })
                .await;
        }
    }

    /// Waits until the sandbox has stopped or paused; its final state.
    pub async fn ended(&self) -> Lifecycle {
        let mut lifecycle = self.lifecycle.clone();
        let ended = lifecycle
            .wait_for(|l| matches!(l.state(), State::Stopped | State::Paused))
            .await
            .map(|l| l.clone());
        ended.unwrap_or_else(|_| self.lifecycle())
    }

    fn gone(&self) -> NodeError {
        NodeError::Gone(self.id.to_string())
    }
}

async fn run<S: Supervised>(
    id: Arc<str>,
    mut sandbox: S,
    mut commands: mpsc::Receiver<Command<S>>,
    state: watch::Sender<Lifecycle>,
    watcher: Arc<dyn Watcher>,
) {
    let id = &*id;
    let watcher = &*watcher;
    loop {
        let command = tokio::select! {
            exit = sandbox.wait_exit() => {
                let how = match exit {
                    Ok(exit) => exit.to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(sandbox = id, "the VM ended by itself: {how}");
                let _ = stop(id, sandbox, StopReason::VmExited(how), &state, watcher).await;
                return;
            }
            command = commands.recv() => command,
        };
        match command {
            None => {
                let _ = stop(id, sandbox, StopReason::Killed, &state, watcher).await;
                return;
            }
            Some(Command::Stop(reason, reply)) => {
                let _ = reply.send(stop(id, sandbox, reason, &state, watcher).await);
                return;
            }
            Some(Command::Detach(reply)) => {
                let _ = reply.send(sandbox.detach().await);
                return;
            }
            Some(Command::Pause(mode, reply)) => {
                move_to(id, &state, watcher, Event::Pause);
                match sandbox.pause(mode).await {
                    Ok(()) => {
                        move_to(id, &state, watcher, Event::Saved);
                        let _ = reply.send(Ok(()));
                        return;
                    }
                    Err(e) => {
                        move_to(id, &state, watcher, Event::PauseFailed);
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Some(Command::With(job)) => job(&mut sandbox).await,
        }
    }
}

/// Stopping, then stopped once everything is freed (even if freeing part
/// of it failed: the error is returned).
async fn stop<S: Supervised>(
    id: &str,
    sandbox: S,
    reason: StopReason,
    state: &watch::Sender<Lifecycle>,
    watcher: &dyn Watcher,
) -> Result<(), NodeError> {
    move_to(id, state, watcher, Event::Stop(reason));
    let destroyed = sandbox.destroy().await;
    if let Err(e) = &destroyed {
        tracing::warn!(sandbox = id, "freeing a stopped sandbox: {e}");
    }
    move_to(id, state, watcher, Event::Released);
    destroyed
}

/// Applies `event`, tells the watcher (which persists it), then publishes
/// the new state: persisted before anyone sees it, and no lock of the
/// channel held while the watcher writes. Only the supervisor writes, so
/// nothing moves between the read and the publish.
fn move_to(id: &str, state: &watch::Sender<Lifecycle>, watcher: &dyn Watcher, event: Event) {
    let mut next = state.borrow().clone();
    if let Err(e) = next.apply(event) {
        // The supervisor only makes moves its own states allow.
        unreachable!("supervisor of {id}: {e}");
    }
    watcher.changed(id, &next);
    state.send_replace(next);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// What the fake was asked to do, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Ready(bool),
        Pause(PauseMode),
        Destroy,
        Detach,
        Job(u32),
    }

    /// A sandbox whose VM "exits" when the test says so.
    struct Fake {
        calls: Arc<Mutex<Vec<Call>>>,
        exit: Option<oneshot::Receiver<VmExit>>,
        ready_fails: bool,
        pause_fails: bool,
        value: u32,
    }

    impl Supervised for Fake {
        async fn ready(&mut self, _: Duration, init: Option<InitRequest>) -> Result<(), NodeError> {
            self.calls.lock().unwrap().push(Call::Ready(init.is_some()));
            if self.ready_fails {
                return Err(NodeError::AgentTimeout {
                    timeout: Duration::from_secs(1),
                    console: "(empty)".into(),
                });
            }
            Ok(())
        }

        async fn wait_exit(&mut self) -> Result<VmExit, NodeError> {
            match self.exit.as_mut() {
                Some(exit) => match exit.await {
                    Ok(how) => {
                        self.exit = None;
                        Ok(how)
                    }
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        }

        async fn pause(&mut self, mode: PauseMode) -> Result<(), NodeError> {
            self.calls.lock().unwrap().push(Call::Pause(mode));
            if self.pause_fails {
                return Err(NodeError::Gone("save failed".into()));
            }
            Ok(())
        }

        async fn destroy(self) -> Result<(), NodeError> {
            self.calls.lock().unwrap().push(Call::Destroy);
            Ok(())
        }

        async fn detach(self) -> Result<(), NodeError> {
            self.calls.lock().unwrap().push(Call::Detach);
            Ok(())
        }
    }

    /// Every state it was told of, per sandbox.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, State, Option<StopReason>)>>);

    impl Watcher for Recorder {
        fn changed(&self, id: &str, lifecycle: &Lifecycle) {
            self.0.lock().unwrap().push((
                id.to_owned(),
                lifecycle.state(),
                lifecycle.reason().cloned(),
            ));
        }
    }

    impl Recorder {
        fn states(&self) -> Vec<State> {
            self.0.lock().unwrap().iter().map(|(_, s, _)| *s).collect()
        }
    }

    fn fake() -> (Fake, Arc<Mutex<Vec<Call>>>, oneshot::Sender<VmExit>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel();
        let fake = Fake {
            calls: Arc::clone(&calls),
            exit: Some(rx),
            ready_fails: false,
            pause_fails: false,
            value: 7,
        };
        (fake, calls, tx)
    }

    async fn start(
        fake: Fake,
        origin: Origin,
    ) -> (Result<SandboxHandle<Fake>, NodeError>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let handle = supervise(
            "sb1",
            fake,
            origin,
            Duration::from_secs(1),
            (origin != Origin::Adopted).then(InitRequest::default),
            Arc::clone(&recorder) as Arc<dyn Watcher>,
        )
        .await;
        (handle, recorder)
    }

    #[tokio::test]
    async fn a_kill_stops_and_frees_it_and_every_state_is_told() {
        let (fake, calls, _exit) = fake();
        let (handle, recorder) = start(fake, Origin::Created).await;
        let handle = handle.unwrap();
        assert_eq!(handle.lifecycle().state(), State::Running);
        let out = tokio::spawn(handle.out_of_service());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!out.is_finished(), "a running sandbox is in service");
        handle.stop(StopReason::Killed).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), out)
            .await
            .expect("out of service once stopped")
            .unwrap();
        assert_eq!(handle.ended().await.reason(), Some(&StopReason::Killed));
        assert_eq!(*calls.lock().unwrap(), [Call::Ready(true), Call::Destroy]);
        assert_eq!(
            recorder.states(),
            [
                State::Starting,
                State::Running,
                State::Stopping,
                State::Stopped
            ]
        );
        // A second stop finds it gone, which is fine; a pause is not.
        handle.stop(StopReason::Killed).await.unwrap();
        assert!(matches!(
            handle.pause(PauseMode::Full).await,
            Err(NodeError::Gone(_))
        ));
    }

    #[tokio::test]
    async fn a_vm_that_ends_by_itself_is_noticed_at_once() {
        let (fake, calls, exit) = fake();
        let (handle, recorder) = start(fake, Origin::Created).await;
        let handle = handle.unwrap();
        exit.send(VmExit::Signaled(9)).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(1), handle.ended())
            .await
            .expect("noticed within 1 s");
        assert_eq!(ended.state(), State::Stopped);
        assert_eq!(
            ended.reason(),
            Some(&StopReason::VmExited("VMM killed by signal 9".into()))
        );
        assert_eq!(*calls.lock().unwrap(), [Call::Ready(true), Call::Destroy]);
        let last = recorder.0.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.0, "sb1");
        assert_eq!(last.1, State::Stopped);
    }

    #[tokio::test]
    async fn a_pause_ends_supervision_and_a_failed_one_keeps_it_running() {
        let (mut fake, calls, _exit) = fake();
        fake.pause_fails = true;
        let (handle, recorder) = start(fake, Origin::Created).await;
        let handle = handle.unwrap();
        assert!(handle.pause(PauseMode::Full).await.is_err());
        assert_eq!(handle.lifecycle().state(), State::Running);
        // Still served: a job sees the sandbox.
        let value = handle
            .with(|fake: &mut Fake| {
                Box::pin(async move {
                    fake.value += 1;
                    fake.calls.lock().unwrap().push(Call::Job(fake.value));
                    fake.value
                })
            })
            .await
            .unwrap();
        assert_eq!(value, 8);
        handle
            .with(|fake: &mut Fake| {
                Box::pin(async move {
                    fake.pause_fails = false;
                })
            })
            .await
            .unwrap();
        handle.pause(PauseMode::Filesystem).await.unwrap();
        assert_eq!(handle.ended().await.state(), State::Paused);
        assert_eq!(
            *calls.lock().unwrap(),
            [
                Call::Ready(true),
                Call::Pause(PauseMode::Full),
                Call::Job(8),
                Call::Pause(PauseMode::Filesystem)
            ]
        );
        assert_eq!(
            recorder.states(),
            [
                State::Starting,
                State::Running,
                State::Pausing,
                State::Running,
                State::Pausing,
                State::Paused
            ]
        );
    }

    #[tokio::test]
    async fn a_start_that_fails_is_stopped_with_its_reason() {
        let (mut fake, calls, _exit) = fake();
        fake.ready_fails = true;
        let (handle, recorder) = start(fake, Origin::Resumed).await;
        assert!(matches!(handle, Err(NodeError::AgentTimeout { .. })));
        assert_eq!(*calls.lock().unwrap(), [Call::Ready(true), Call::Destroy]);
        let told = recorder.0.lock().unwrap().clone();
        let states: Vec<State> = told.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(states, [State::Resuming, State::Stopping, State::Stopped]);
        assert!(matches!(told[2].2, Some(StopReason::Failed(_))));
    }

    #[tokio::test]
    async fn an_adopted_sandbox_is_only_checked_and_a_detached_one_left_as_it_is() {
        let (fake, calls, _exit) = fake();
        let (handle, recorder) = start(fake, Origin::Adopted).await;
        let handle = handle.unwrap();
        assert_eq!(handle.lifecycle().state(), State::Running);
        handle.detach().await.unwrap();
        // Out of this process's service, in the state it had.
        tokio::time::timeout(Duration::from_secs(1), handle.out_of_service())
            .await
            .expect("a detached sandbox is out of service here");
        assert_eq!(handle.ended().await.state(), State::Running);
        assert_eq!(*calls.lock().unwrap(), [Call::Ready(false), Call::Detach]);
        assert_eq!(recorder.states(), [State::Starting, State::Running]);
        // Nothing is left to stop.
        handle.stop(StopReason::Killed).await.unwrap();
        assert_eq!(*calls.lock().unwrap(), [Call::Ready(false), Call::Detach]);
    }

    #[tokio::test]
    async fn dropping_every_handle_stops_it() {
        let (fake, calls, _exit) = fake();
        let (handle, recorder) = start(fake, Origin::Created).await;
        drop(handle.unwrap());
        for _ in 0..100 {
            if recorder.states().last() == Some(&State::Stopped) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(recorder.states().last(), Some(&State::Stopped));
        assert_eq!(*calls.lock().unwrap(), [Call::Ready(true), Call::Destroy]);
    }
}
