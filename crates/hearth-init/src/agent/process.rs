//! The `process.Process` Connect service: processes with pipes or a
//! pseudo-terminal, their output fanned out to every subscribed stream
//! (`Start` and any number of `Connect`), input by `SendInput` or the
//! client-streamed `StreamInput`, resizing by `Update`.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hearth_proto::connect::{Code, ConnectError};
use hearth_proto::process::process_event::{self, DataEvent, EndEvent, Event, data_event::Output};
use hearth_proto::process::{
    CloseStdinRequest, CloseStdinResponse, ConnectRequest, ConnectResponse, ListRequest,
    ListResponse, ProcessConfig, ProcessEvent, ProcessInfo, ProcessSelector, SendInputRequest,
    SendInputResponse, SendSignalRequest, SendSignalResponse, Signal, StartRequest, StartResponse,
    StreamInputRequest, StreamInputResponse, UpdateRequest, UpdateResponse, process_input,
    process_selector, stream_input_request,
};
use nix::sys::signal::{self as nix_signal, Signal as NixSignal};
use nix::unistd::{Pid, geteuid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio::time::Instant;

use super::connect::{self, Codec, RequestStream};
use super::spawn::{self, Plan, PtyMaster, SpawnError};
use super::{Agent, request_user};
use crate::passwd::{self, PasswdError};
use crate::reaper::ExitStatus;

/// Largest output chunk per data event.
const CHUNK: usize = 32 * 1024;
/// Events buffered per stream before the output readers wait for the client.
const FRAME_BUFFER: usize = 16;
/// Terminal size when `pty` comes without one.
const DEFAULT_PTY_SIZE: (u16, u16) = (80, 24);

pub(super) fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/process.Process/Start", post(start))
        .route("/process.Process/Connect", post(connect_process))
        .route("/process.Process/List", post(list))
        .route("/process.Process/Update", post(update))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/StreamInput", post(stream_input))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/CloseStdin", post(close_stdin))
}

type Stdin = Arc<AsyncMutex<Option<pipe::Sender>>>;

/// Where a process's input goes.
#[derive(Debug, Clone, Default)]
enum Input {
    /// Started with `stdin: false`.
    #[default]
    None,
    /// The stdin pipe, `None` inside once closed.
    Pipe(Stdin),
    Pty(Arc<PtyMaster>),
}

/// The streams that receive a process's events. Each gets every event from
/// when it subscribed; a full stream holds the process's output back.
#[derive(Debug, Clone, Default)]
struct Subscribers(Arc<StdMutex<Vec<mpsc::Sender<ProcessEvent>>>>);

impl Subscribers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::Sender<ProcessEvent>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a stream, which first gets the start event.
    fn add(&self, pid: u32, tx: mpsc::Sender<ProcessEvent>) {
        let start = ProcessEvent {
            event: Some(Event::Start(process_event::StartEvent { pid })),
        };
        // A fresh channel has room for its first event.
        if tx.try_send(start).is_ok() {
            self.lock().push(tx);
        }
    }

    /// Sends `event` to every stream, dropping those whose client is gone.
    async fn send(&self, event: Event) {
        let event = ProcessEvent { event: Some(event) };
        let targets = self.lock().clone();
        let mut gone = false;
        for tx in &targets {
            gone |= tx.send(event.clone()).await.is_err();
        }
        if gone {
            tracing::debug!("a client went away; it gets no more output");
            self.lock().retain(|tx| !tx.is_closed());
        }
    }

    /// Ends every stream.
    fn close(&self) {
        self.lock().clear();
    }
}

/// A process started through the agent, while it runs.
#[derive(Debug, Default)]
struct Entry {
    /// Tells a pid's successive processes apart.
    id: u64,
    config: ProcessConfig,
    tag: Option<String>,
    input: Input,
    subscribers: Subscribers,
}

/// The agent's running processes by pid.
#[derive(Debug, Default)]
pub(super) struct Table {
    next_id: u64,
    entries: HashMap<u32, Entry>,
}

impl Table {
    fn insert(&mut self, pid: u32, mut entry: Entry) -> u64 {
        self.next_id += 1;
        entry.id = self.next_id;
        self.entries.insert(pid, entry);
        self.next_id
    }

    /// Removes `pid` unless it now belongs to a newer process.
    fn remove(&mut self, pid: u32, id: u64) {
        if self.entries.get(&pid).is_some_and(|e| e.id == id) {
            self.entries.remove(&pid);
        }
    }

    fn select(&self, selector: Option<&ProcessSelector>) -> Result<(u32, &Entry), ConnectError> {
        let found = match selector.and_then(|s| s.selector.as_ref()) {
            Some(process_selector::Selector::Pid(pid)) => self.entries.get_key_value(pid),
            Some(process_selector::Selector::Tag(tag)) => self
                .entries
                .iter()
                .find(|(_, e)| e.tag.as_deref() == Some(tag.as_str())),
            None => {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    "No process selected",
                ));
            }
        };
        found.map(|(pid, e)| (*pid, e)).ok_or_else(|| {
            ConnectError::new(Code::NotFound, "No running process matches the selector")
        })
    }
}

fn spawn_error(e: &SpawnError) -> ConnectError {
    let code = match e {
        SpawnError::NotFound(_) => Code::NotFound,
        SpawnError::User(PasswdError::UnknownUser(_) | PasswdError::UnknownUid(_)) => {
            Code::Unauthenticated
        }
        SpawnError::User(PasswdError::Read { .. }) | SpawnError::Pty(_) => Code::Internal,
        SpawnError::NotRoot(_) => Code::PermissionDenied,
        SpawnError::Cwd(_) | SpawnError::Nul | SpawnError::Spawn { .. } => Code::InvalidArgument,
    };
    ConnectError::new(code, crate::error_chain(e))
}

/// Where a process's output comes from.
enum Source {
    Pipes {
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
    Pty(Arc<PtyMaster>),
}

/// A started process whose output and exit are still to be collected.
struct Running {
    pid: u32,
    id: u64,
    source: Source,
    exit: oneshot::Receiver<ExitStatus>,
    subscribers: Subscribers,
}

/// The response stream of a subscriber.
fn event_stream<M: connect::Wire + Clone + Send + 'static>(
    codec: Codec,
    headers: &HeaderMap,
    deadline: Option<Instant>,
    events: mpsc::Receiver<ProcessEvent>,
    wrap: fn(ProcessEvent) -> M,
) -> Response {
    let pacing = connect::Pacing {
        keepalive: ProcessEvent {
            event: Some(Event::Keepalive(process_event::KeepAlive {})),
        },
        interval: connect::keepalive_interval(headers),
        deadline,
    };
    connect::stream_response(codec, events, wrap, pacing)
}

fn start_response(event: ProcessEvent) -> StartResponse {
    StartResponse { event: Some(event) }
}

fn connect_response(event: ProcessEvent) -> ConnectResponse {
    ConnectResponse { event: Some(event) }
}

async fn start(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    let connect::StreamCall {
        codec,
        request,
        deadline,
    } = match connect::stream_call::<StartRequest>(&headers, &body) {
        Ok(call) => call,
        Err(response) => return *response,
    };
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    match launch(&agent, &headers, request, tx) {
        Ok(running) => {
            if let Some(at) = deadline {
                // As envd: the request's timeout bounds the process too.
                tokio::spawn(kill_at(agent.clone(), running.pid, running.id, at));
            }
            tokio::spawn(pump(agent, running));
            event_stream(codec, &headers, deadline, rx, start_response)
        }
        Err(e) => {
            tracing::info!("start failed: {e}");
            connect::stream_error(codec, &e)
        }
    }
}

/// Kills process `pid` after `limit` unless it has ended by then.
async fn kill_at(agent: Arc<Agent>, pid: u32, id: u64, at: Instant) {
    tokio::time::sleep_until(at).await;
    // The entry goes once the pump has the exit status; only between the
    // reap and that could the pid already name another process (envd's
    // timeout has the same window).
    let processes = agent.processes();
    if processes.entries.get(&pid).is_some_and(|e| e.id == id) {
        tracing::info!(pid, "killing the process: its request timed out");
        if let Ok(raw) = i32::try_from(pid) {
            let _ = signal_group(raw, NixSignal::SIGKILL);
        }
    }
}

/// Signals the process group that `pid` leads (every process starts in a
/// session of its own), so children that hold the output pipes, like the
/// `sleep` of `sh -c 'trap "" TERM; sleep 600 & wait'`, get it too; falls
/// back to `pid` alone if it leads no group.
fn signal_group(pid: i32, signal: NixSignal) -> nix::Result<()> {
    match nix_signal::killpg(Pid::from_raw(pid), signal) {
        Err(nix::errno::Errno::ESRCH) => nix_signal::kill(Pid::from_raw(pid), signal),
        other => other,
    }
}

/// What `launch` has prepared before the spawn.
struct Prepared {
    command: std::process::Command,
    pty: Option<PtyMaster>,
}

fn prepare(
    agent: &Agent,
    user_name: &str,
    config: &ProcessConfig,
    request: &StartRequest,
) -> Result<Prepared, SpawnError> {
    let settings = agent.settings();
    let user = passwd::lookup_user(&agent.etc, user_name)?;
    let cwd = spawn::resolve_cwd(
        config.cwd.as_deref(),
        settings.default_workdir.as_deref(),
        &user.home,
    )?;
    let mut env = spawn::build_env(&user, &settings.env, &config.envs);
    if request.pty.is_some() {
        env.entry("TERM".to_owned())
            .or_insert_with(|| "xterm-256color".to_owned());
    }
    let path = env.get("PATH").map_or("", String::as_str);
    let (cmd, exe) = match spawn::resolve_executable(&config.cmd, path, &cwd) {
        Some(exe) => (config.cmd.clone(), exe),
        // argv[0] names the stand-in too: busybox picks its applet by it.
        None => spawn::shell_stand_in(&config.cmd)
            .map(|sh| (sh.to_string_lossy().into_owned(), sh))
            .ok_or_else(|| SpawnError::NotFound(config.cmd.clone()))?,
    };
    let plan = Plan {
        cmd,
        exe,
        args: config.args.clone(),
        env,
        cwd,
        // envd keeps stdin open unless the client says otherwise.
        stdin: request.stdin != Some(false),
    };
    let (pty, slave): (Option<PtyMaster>, Option<OwnedFd>) = match &request.pty {
        Some(pty) => {
            let (cols, rows) = pty.size.map_or(Ok(DEFAULT_PTY_SIZE), |s| {
                terminal_size(s.cols, s.rows).map_err(|e| {
                    SpawnError::Pty(io::Error::new(io::ErrorKind::InvalidInput, e.message))
                })
            })?;
            let (master, slave) = spawn::open_pty(cols, rows)?;
            (Some(master), Some(slave))
        }
        None => (None, None),
    };
    let command = spawn::command(&plan, &user, geteuid().as_raw(), slave.as_ref())?;
    // `command` holds its own copies of the slave; ours closes here so that
    // the master sees the end once the process's side is closed.
    Ok(Prepared { command, pty })
}

/// A terminal size from the wire.
fn terminal_size(cols: u32, rows: u32) -> Result<(u16, u16), ConnectError> {
    match (u16::try_from(cols), u16::try_from(rows)) {
        (Ok(c), Ok(r)) if c > 0 && r > 0 => Ok((c, r)),
        _ => Err(ConnectError::new(
            Code::InvalidArgument,
            format!("Terminal size {cols}x{rows} is invalid; send 1 to 65535 columns and rows"),
        )),
    }
}

fn launch(
    agent: &Agent,
    headers: &HeaderMap,
    request: StartRequest,
    first: mpsc::Sender<ProcessEvent>,
) -> Result<Running, ConnectError> {
    let user_name = request_user(headers, &agent.settings())?;
    let config = request.process.clone().unwrap_or_default();
    if let Some(size) = request.pty.as_ref().and_then(|p| p.size) {
        terminal_size(size.cols, size.rows)?;
    }
    let Prepared { mut command, pty } =
        prepare(agent, &user_name, &config, &request).map_err(|e| spawn_error(&e))?;
    let spawned = agent.reaper.spawn(&mut command).map_err(|source| {
        spawn_error(&SpawnError::Spawn {
            cmd: config.cmd.clone(),
            source,
        })
    });
    drop(command);
    let (mut child, exit) = spawned?;
    let pid = child.id();
    let (source, input) = match pty {
        Some(master) => {
            let master = Arc::new(master);
            (Source::Pty(master.clone()), Input::Pty(master))
        }
        None => {
            let (stdout, stderr, stdin) =
                (child.stdout.take(), child.stderr.take(), child.stdin.take());
            let pipes = || -> io::Result<_> {
                let missing = || io::Error::other("pipe was not created");
                let stdout = OwnedFd::from(stdout.ok_or_else(missing)?);
                let stderr = OwnedFd::from(stderr.ok_or_else(missing)?);
                let stdin = match stdin {
                    Some(fd) => Some(pipe::Sender::from_owned_fd(OwnedFd::from(fd))?),
                    None => None,
                };
                Ok((
                    pipe::Receiver::from_owned_fd(stdout)?,
                    pipe::Receiver::from_owned_fd(stderr)?,
                    stdin,
                ))
            };
            let (stdout, stderr, stdin) = pipes().map_err(|e| {
                // The child runs but cannot be watched: stop it rather than leak it.
                let _ = child.kill();
                ConnectError::new(
                    Code::Internal,
                    format!("Cannot watch the process's pipes: {e}"),
                )
            })?;
            let input = match stdin {
                Some(s) => Input::Pipe(Arc::new(AsyncMutex::new(Some(s)))),
                None => Input::None,
            };
            (Source::Pipes { stdout, stderr }, input)
        }
    };
    let subscribers = Subscribers::default();
    subscribers.add(pid, first);
    let entry = Entry {
        id: 0,
        config,
        tag: request.tag,
        input,
        subscribers: subscribers.clone(),
    };
    let id = agent.processes().insert(pid, entry);
    tracing::info!(pid, "started process");
    Ok(Running {
        pid,
        id,
        source,
        exit,
        subscribers,
    })
}

async fn read_pipe(pipe: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn read_pty(pty: &Option<Arc<PtyMaster>>, buf: &mut [u8]) -> io::Result<usize> {
    match pty {
        Some(pty) => pty.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Sends a process's events to its subscribers: output as it arrives, and
/// the end once the output is at EOF and the exit status is in. A slow
/// client slows the readers (bounded channels); without subscribers the
/// output is discarded until the process is done.
async fn pump(agent: Arc<Agent>, running: Running) {
    let Running {
        pid,
        id,
        source,
        mut exit,
        subscribers,
    } = running;
    let (mut stdout, mut stderr, mut pty) = match source {
        Source::Pipes { stdout, stderr } => (Some(stdout), Some(stderr), None),
        Source::Pty(master) => (None, None, Some(master)),
    };
    let buffer = |present: bool| vec![0u8; if present { CHUNK } else { 0 }];
    let (mut out_buf, mut err_buf, mut pty_buf) = (
        buffer(stdout.is_some()),
        buffer(stderr.is_some()),
        buffer(pty.is_some()),
    );
    let mut status = None;
    while stdout.is_some() || stderr.is_some() || pty.is_some() || status.is_none() {
        let output = tokio::select! {
            n = read_pipe(&mut stdout, &mut out_buf) => match n {
                Ok(n) if n > 0 => Output::Stdout(out_buf[..n].to_vec()),
                _ => { stdout = None; continue }
            },
            n = read_pipe(&mut stderr, &mut err_buf) => match n {
                Ok(n) if n > 0 => Output::Stderr(err_buf[..n].to_vec()),
                _ => { stderr = None; continue }
            },
            n = read_pty(&pty, &mut pty_buf) => match n {
                Ok(n) if n > 0 => Output::Pty(pty_buf[..n].to_vec()),
                _ => { pty = None; continue }
            },
            s = &mut exit, if status.is_none() => { status = Some(s); continue }
        };
        subscribers
            .send(Event::Data(DataEvent {
                output: Some(output),
            }))
            .await;
    }
    let end = match status {
        Some(Ok(status)) => EndEvent {
            exit_code: status.code(),
            exited: status.exited(),
            status: status.describe(),
            error: crate::pid1::shutting_down().then(|| {
                "The sandbox is shutting down (reboot or power-off in the guest)".to_owned()
            }),
        },
        _ => EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".to_owned(),
            error: Some("The exit status was lost".to_owned()),
        },
    };
    tracing::info!(pid, status = %end.status, "process ended");
    // Removed first: whoever subscribed until now gets the end event, and
    // nobody can subscribe after it.
    agent.processes().remove(pid, id);
    subscribers.send(Event::End(end)).await;
    subscribers.close();
}

/// `Connect`: the selected process's events from now on, after a start
/// event with its pid.
async fn connect_process(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let connect::StreamCall {
        codec,
        request,
        deadline,
    } = match connect::stream_call::<ConnectRequest>(&headers, &body) {
        Ok(call) => call,
        Err(response) => return *response,
    };
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    let subscribed = {
        let processes = agent.processes();
        processes
            .select(request.process.as_ref())
            .map(|(pid, entry)| entry.subscribers.add(pid, tx))
    };
    match subscribed {
        Ok(()) => event_stream(codec, &headers, deadline, rx, connect_response),
        Err(e) => connect::stream_error(codec, &e),
    }
}

async fn list(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    let codec = match connect::unary_request::<ListRequest>(&headers, &body) {
        Ok((codec, _)) => codec,
        Err(rejection) => return rejection.into_response(),
    };
    let processes = agent
        .processes()
        .entries
        .iter()
        .map(|(pid, e)| ProcessInfo {
            config: Some(e.config.clone()),
            pid: *pid,
            tag: e.tag.clone(),
        })
        .collect();
    connect::unary_response(codec, Ok(ListResponse { processes }))
}

async fn update(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    let (codec, request) = match connect::unary_request::<UpdateRequest>(&headers, &body) {
        Ok(request) => request,
        Err(rejection) => return rejection.into_response(),
    };
    let result = (|| {
        let (pid, input) = input_of(&agent, request.process.as_ref())?;
        let Some(size) = request.pty.and_then(|p| p.size) else {
            return Ok(UpdateResponse {});
        };
        let (cols, rows) = terminal_size(size.cols, size.rows)?;
        match input {
            Input::Pty(master) => master.resize(cols, rows).map_err(|e| {
                ConnectError::new(Code::Internal, format!("Cannot resize the terminal: {e}"))
            })?,
            Input::None | Input::Pipe(_) => {
                return Err(ConnectError::new(
                    Code::FailedPrecondition,
                    format!("Process {pid} has no terminal to resize; start it with `pty`"),
                ));
            }
        }
        Ok(UpdateResponse {})
    })();
    connect::unary_response(codec, result)
}

async fn send_signal(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    let (codec, request) = match connect::unary_request::<SendSignalRequest>(&headers, &body) {
        Ok(request) => request,
        Err(rejection) => return rejection.into_response(),
    };
    let result = (|| {
        // envd's enum names SIGTERM and SIGKILL; its values are the Linux
        // signal numbers, so any other number is that signal (how the node
        // delivers a template's STOPSIGNAL).
        let signal = match Signal::try_from(request.signal) {
            Ok(Signal::Unspecified) => None,
            _ => NixSignal::try_from(request.signal).ok(),
        }
        .ok_or_else(|| {
            ConnectError::new(
                Code::InvalidArgument,
                format!(
                    "Unsupported signal {}; send SIGNAL_SIGTERM, SIGNAL_SIGKILL or a Linux \
                     signal number",
                    request.signal
                ),
            )
        })?;
        let (pid, _) = agent.processes().select(request.process.as_ref())?;
        let pid = i32::try_from(pid)
            .map_err(|_| ConnectError::new(Code::Internal, "Pid out of range"))?;
        signal_group(pid, signal).map_err(|e| {
            ConnectError::new(Code::Internal, format!("Cannot signal process {pid}: {e}"))
        })?;
        Ok(SendSignalResponse {})
    })();
    connect::unary_response(codec, result)
}

/// The input of the selected process.
fn input_of(
    agent: &Agent,
    selector: Option<&ProcessSelector>,
) -> Result<(u32, Input), ConnectError> {
    let processes = agent.processes();
    let (pid, entry) = processes.select(selector)?;
    Ok((pid, entry.input.clone()))
}

fn stdin_closed() -> ConnectError {
    ConnectError::new(
        Code::FailedPrecondition,
        "The process's stdin is already closed",
    )
}

/// Writes `data` to process `pid`'s stdin or terminal, whichever it has
/// and the data is meant for.
async fn write_input(
    pid: u32,
    input: &Input,
    data: Option<process_input::Input>,
) -> Result<(), ConnectError> {
    let failed = |what: &str, e: io::Error| {
        ConnectError::new(
            Code::FailedPrecondition,
            format!("Cannot write to the {what} of process {pid}: {e}"),
        )
    };
    match (data, input) {
        (None, _) => Ok(()),
        (Some(process_input::Input::Stdin(data)), Input::Pipe(stdin)) => {
            let mut guard = stdin.lock().await;
            let pipe = guard.as_mut().ok_or_else(stdin_closed)?;
            pipe.write_all(&data).await.map_err(|e| failed("stdin", e))
        }
        (Some(process_input::Input::Pty(data)), Input::Pty(master)) => master
            .write_all(&data)
            .await
            .map_err(|e| failed("terminal", e)),
        (Some(process_input::Input::Stdin(_)), Input::Pty(_)) => Err(ConnectError::new(
            Code::FailedPrecondition,
            format!("Process {pid} runs in a terminal; send the input as `pty`, not `stdin`"),
        )),
        (Some(process_input::Input::Pty(_)), _) => Err(ConnectError::new(
            Code::FailedPrecondition,
            format!("Process {pid} has no terminal; send the input as `stdin`"),
        )),
        (Some(process_input::Input::Stdin(_)), Input::None) => Err(ConnectError::new(
            Code::FailedPrecondition,
            format!("Process {pid} has no stdin pipe; start it with stdin set to true"),
        )),
    }
}

async fn send_input(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    let (codec, request) = match connect::unary_request::<SendInputRequest>(&headers, &body) {
        Ok(request) => request,
        Err(rejection) => return rejection.into_response(),
    };
    let result = async {
        let (pid, input) = input_of(&agent, request.process.as_ref())?;
        write_input(pid, &input, request.input.and_then(|i| i.input)).await?;
        Ok(SendInputResponse {})
    };
    connect::unary_response(codec, result.await)
}

/// `StreamInput`: a start event naming the process, then data events
/// written in order as they arrive, keepalives ignored.
async fn stream_input(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Body) -> Response {
    let codec = match Codec::of_stream(&headers) {
        Ok(codec) => codec,
        Err(rejection) => return rejection.into_response(),
    };
    let result = async {
        use stream_input_request::Event as In;
        let invalid = |what: &str| ConnectError::new(Code::InvalidArgument, what.to_owned());
        let mut stream = RequestStream::new(codec, &headers, body)?;
        let first: StreamInputRequest = stream
            .next()
            .await
            .ok_or_else(|| invalid("The input stream is empty; send a start event first"))??;
        let Some(In::Start(start)) = first.event else {
            return Err(invalid("The first input event must be a start event"));
        };
        let (pid, input) = input_of(&agent, start.process.as_ref())?;
        while let Some(message) = stream.next::<StreamInputRequest>().await {
            match message?.event {
                Some(In::Data(data)) => {
                    write_input(pid, &input, data.input.and_then(|i| i.input)).await?;
                }
                Some(In::Keepalive(_)) | None => {}
                Some(In::Start(_)) => {
                    return Err(invalid("Only the first input event may be a start event"));
                }
            }
        }
        Ok(StreamInputResponse {})
    };
    connect::client_stream_response(codec, result.await)
}

async fn close_stdin(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    let (codec, request) = match connect::unary_request::<CloseStdinRequest>(&headers, &body) {
        Ok(request) => request,
        Err(rejection) => return rejection.into_response(),
    };
    let result = async {
        let (pid, input) = input_of(&agent, request.process.as_ref())?;
        match input {
            Input::Pipe(stdin) => {
                stdin.lock().await.take().ok_or_else(stdin_closed)?;
            }
            Input::Pty(_) => {
                return Err(ConnectError::new(
                    Code::FailedPrecondition,
                    format!(
                        "Process {pid} runs in a terminal; send Ctrl-D (0x04) as pty input instead"
                    ),
                ));
            }
            Input::None => {
                return Err(ConnectError::new(
                    Code::FailedPrecondition,
                    format!("Process {pid} has no stdin pipe; start it with stdin set to true"),
                ));
            }
        }
        Ok(CloseStdinResponse {})
    };
    connect::unary_response(codec, result.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_pid(pid: u32) -> ProcessSelector {
        ProcessSelector {
            selector: Some(process_selector::Selector::Pid(pid)),
        }
    }

    #[test]
    fn table_selects_by_pid_and_tag_and_survives_pid_reuse() {
        let mut table = Table::default();
        let web = Entry {
            tag: Some("web".into()),
            ..Entry::default()
        };
        let old = table.insert(10, web);
        assert_eq!(table.select(Some(&by_pid(10))).unwrap().0, 10);
        let tag = ProcessSelector {
            selector: Some(process_selector::Selector::Tag("web".into())),
        };
        assert_eq!(table.select(Some(&tag)).unwrap().0, 10);
        assert_eq!(
            table.select(Some(&by_pid(11))).unwrap_err().code,
            Code::NotFound
        );
        assert_eq!(table.select(None).unwrap_err().code, Code::InvalidArgument);
        // pid 10 is reused before the old stream cleans up: the newer entry stays.
        let new = table.insert(10, Entry::default());
        table.remove(10, old);
        assert!(table.entries.contains_key(&10));
        table.remove(10, new);
        assert!(table.entries.is_empty());
    }

    #[test]
    fn spawn_errors_map_to_connect_codes() {
        let not_found = spawn_error(&SpawnError::NotFound("foo".into()));
        assert_eq!(not_found.code, Code::NotFound);
        assert_eq!(not_found.message, "Executable 'foo' not found in PATH");
        let unknown = spawn_error(&SpawnError::User(PasswdError::UnknownUser("x".into())));
        assert_eq!(unknown.code, Code::Unauthenticated);
        let failed = spawn_error(&SpawnError::Spawn {
            cmd: "x".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        });
        assert_eq!(failed.code, Code::InvalidArgument);
        assert!(
            failed
                .message
                .starts_with("Cannot start 'x': Permission denied"),
            "{}",
            failed.message
        );
    }

    #[test]
    fn terminal_sizes_fit_a_winsize() {
        assert_eq!(terminal_size(80, 24), Ok((80, 24)));
        assert_eq!(terminal_size(65535, 1), Ok((65535, 1)));
        for (cols, rows) in [(0, 24), (80, 0), (65536, 24)] {
            assert_eq!(
                terminal_size(cols, rows).unwrap_err().code,
                Code::InvalidArgument
            );
        }
    }

    #[tokio::test]
    async fn subscribers_get_events_from_when_they_joined_and_gone_ones_are_dropped() {
        let subscribers = Subscribers::default();
        let (early, mut early_rx) = mpsc::channel(4);
        subscribers.add(7, early);
        let data = |b: &[u8]| {
            Event::Data(DataEvent {
                output: Some(Output::Stdout(b.to_vec())),
            })
        };
        subscribers.send(data(b"one")).await;
        let (late, mut late_rx) = mpsc::channel(4);
        subscribers.add(7, late);
        let (gone, gone_rx) = mpsc::channel(4);
        subscribers.add(7, gone);
        drop(gone_rx);
        subscribers.send(data(b"two")).await;
        assert_eq!(subscribers.lock().len(), 2);
        subscribers.close();
        let drain = |rx: &mut mpsc::Receiver<ProcessEvent>| {
            let mut events = Vec::new();
            while let Ok(e) = rx.try_recv() {
                events.push(e.event.unwrap());
            }
            events
        };
        let start = Event::Start(process_event::StartEvent { pid: 7 });
        assert_eq!(
            drain(&mut early_rx),
            [start.clone(), data(b"one"), data(b"two")]
        );
        assert_eq!(drain(&mut late_rx), [start, data(b"two")]);
        assert!(late_rx.is_closed());
    }
}
