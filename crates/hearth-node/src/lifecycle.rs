//! A sandbox's lifecycle: its states, the only legal moves between them,
//! and why a stopped sandbox stopped. Pure: the supervisor applies events
//! and persists each new state; nothing here touches a VM.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Its VM is being restored or booted; the agent has not answered yet.
    Starting,
    Running,
    /// Its memory and devices are being saved.
    Pausing,
    /// Saved to its directory; no VM runs.
    Paused,
    /// Being restored from its saved state.
    Resuming,
    /// Its VM is being stopped and its files removed.
    Stopping,
    /// Gone; [`Lifecycle::reason`] says why. Nothing leaves this state.
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Resuming => "resuming",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a sandbox stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum StopReason {
    /// Someone asked (an API call, the CLI, a server shutdown).
    Killed,
    /// Its time ran out.
    TimedOut,
    /// Its VM ended without being asked: a guest power-off, reboot or
    /// panic, a VMM crash, an OOM kill, a `kill -9`. The detail says how.
    VmExited(String),
    /// Starting or resuming failed.
    Failed(String),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Killed => f.write_str("killed"),
            Self::TimedOut => f.write_str("timed out"),
            Self::VmExited(how) => write!(f, "VM exited: {how}"),
            Self::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// What happens to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent answered after a start.
    Ready,
    /// A pause was asked for.
    Pause,
    /// The state is saved and the VM gone.
    Saved,
    /// Saving failed; the guest continues.
    PauseFailed,
    /// A resume was asked for.
    Resume,
    /// Resuming failed; the saved state is kept.
    ResumeFailed,
    /// A stop was asked for, or the VM ended on its own.
    Stop(StopReason),
    /// The VM is gone and everything the sandbox held is freed.
    Released,
}

/// An event that the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {state} sandbox cannot take {event:?}")]
pub struct IllegalTransition {
    pub state: State,
    pub event: Event,
}

/// One sandbox's state and, once it is stopping, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    state: State,
    #[serde(default)]
    reason: Option<StopReason>,
}

impl Lifecycle {
    /// A sandbox whose VM is starting.
    pub fn starting() -> Self {
        Self {
            state: State::Starting,
            reason: None,
        }
    }

    /// A paused sandbox found on disk.
    pub fn paused() -> Self {
        Self {
            state: State::Paused,
            reason: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Why it is stopping or stopped.
    pub fn reason(&self) -> Option<&StopReason> {
        self.reason.as_ref()
    }

    /// The state `event` leads to, without moving.
    pub fn next(&self, event: &Event) -> Result<State, IllegalTransition> {
        use State::*;
        let next = match (self.state, event) {
            (Starting, Event::Ready) => Running,
            (Running, Event::Pause) => Pausing,
            (Pausing, Event::Saved) => Paused,
            (Pausing, Event::PauseFailed) => Running,
            (Paused, Event::Resume) => Resuming,
            (Resuming, Event::Ready) => Running,
            (Resuming, Event::ResumeFailed) => Paused,
            // A VM can end under any state that has one; a running or
            // paused sandbox can be stopped; a failed start stops.
            (Starting | Running | Pausing | Resuming | Paused, Event::Stop(_)) => Stopping,
            (Stopping, Event::Released) => Stopped,
            (state, event) => {
                return Err(IllegalTransition {
                    state,
                    event: event.clone(),
                });
            }
        };
        Ok(next)
    }

    /// Moves on `event`, or refuses it and stays.
    pub fn apply(&mut self, event: Event) -> Result<State, IllegalTransition> {
        let next = self.next(&event)?;
        if let Event::Stop(reason) = event {
            self.reason = Some(reason);
        }
        self.state = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: Vec<Event>) -> Result<Lifecycle, IllegalTransition> {
        let mut life = Lifecycle::starting();
        for event in events {
            life.apply(event)?;
        }
        Ok(life)
    }

    #[test]
    fn a_sandbox_starts_pauses_resumes_and_stops() {
        let life = run(vec![
            Event::Ready,
            Event::Pause,
            Event::Saved,
            Event::Resume,
            Event::Ready,
            Event::Stop(StopReason::TimedOut),
            Event::Released,
        ])
        .unwrap();
        assert_eq!(life.state(), State::Stopped);
        assert_eq!(life.reason(), Some(&StopReason::TimedOut));
    }

    #[test]
    fn failures_go_back_to_where_the_guest_still_is() {
        let mut life = run(vec![Event::Ready, Event::Pause]).unwrap();
        assert_eq!(life.apply(Event::PauseFailed), Ok(State::Running));
        life.apply(Event::Pause).unwrap();
        life.apply(Event::Saved).unwrap();
        life.apply(Event::Resume).unwrap();
        assert_eq!(life.apply(Event::ResumeFailed), Ok(State::Paused));
        assert_eq!(life.reason(), None);
    }

    #[test]
    fn a_vm_that_ends_by_itself_stops_the_sandbox_with_how() {
        for before in [
            vec![],
            vec![Event::Ready],
            vec![Event::Ready, Event::Pause],
            vec![Event::Ready, Event::Pause, Event::Saved, Event::Resume],
        ] {
            let mut life = run(before).unwrap();
            let exited = StopReason::VmExited("VMM killed by signal 9".into());
            assert_eq!(life.apply(Event::Stop(exited.clone())), Ok(State::Stopping));
            assert_eq!(life.apply(Event::Released), Ok(State::Stopped));
            assert_eq!(life.reason(), Some(&exited));
        }
    }

    #[test]
    fn illegal_moves_are_refused_and_change_nothing() {
        let mut life = Lifecycle::starting();
        for event in [
            Event::Pause,
            Event::Saved,
            Event::Resume,
            Event::Released,
            Event::PauseFailed,
        ] {
            let err = life.apply(event.clone()).unwrap_err();
            assert_eq!(
                err,
                IllegalTransition {
                    state: State::Starting,
                    event
                }
            );
        }
        assert_eq!(life, Lifecycle::starting());

        let mut stopped = run(vec![Event::Stop(StopReason::Killed), Event::Released]).unwrap();
        for event in [
            Event::Ready,
            Event::Resume,
            Event::Stop(StopReason::Killed),
            Event::Released,
        ] {
            assert!(stopped.apply(event).is_err());
        }
        assert_eq!(stopped.state(), State::Stopped);
        assert_eq!(stopped.reason(), Some(&StopReason::Killed));

        // Running cannot resume; paused cannot pause again.
        let mut running = run(vec![Event::Ready]).unwrap();
        assert!(running.apply(Event::Resume).is_err());
        let mut paused = Lifecycle::paused();
        assert!(paused.apply(Event::Pause).is_err());
        assert!(paused.apply(Event::Ready).is_err());
    }

    #[test]
    fn it_round_trips_through_json() {
        let life = run(vec![
            Event::Stop(StopReason::VmExited("VMM exit status 0".into())),
            Event::Released,
        ])
        .unwrap();
        let text = serde_json::to_string(&life).unwrap();
        assert_eq!(
            text,
            r#"{"state":"stopped","reason":{"kind":"vm_exited","detail":"VMM exit status 0"}}"#
        );
        assert_eq!(serde_json::from_str::<Lifecycle>(&text).unwrap(), life);
    }
}
