//! A minimal QMP client: one command at a time, events skipped.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::VmmError;

#[derive(Debug)]
pub(super) struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub(super) async fn connect(path: &Path) -> Result<Self, VmmError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(VmmError::io(path.display().to_string()))?;
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmmError::Qmp(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub(super) async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmmError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(VmmError::io("the QMP socket"))?;
        self.reply(command).await
    }

    /// The answer to the command just sent: its `return` value or its
    /// error. Asynchronous events (STOP, SHUTDOWN, …) are skipped.
    async fn reply(&mut self, command: &str) -> Result<Value, VmmError> {
        loop {
            let message = self.read_message().await?;
            if let Some(ret) = message.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = message.get("error") {
                let desc = err.get("desc").and_then(Value::as_str).unwrap_or("unknown");
                return Err(VmmError::Qmp(format!("{command}: {desc}")));
            }
        }
    }

    /// Hands `fd` to QEMU under `name` (`getfd`, the descriptor riding on
    /// the command as SCM_RIGHTS), for a later `fd:NAME` URI.
    pub(super) async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), VmmError> {
        self.execute_with_fd("getfd", json!({ "fdname": name }), fd)
            .await
            .map(drop)
    }

    /// Runs `command` with `fd` riding on it as SCM_RIGHTS (`getfd`,
    /// `add-fd`), and returns its `return` value.
    pub(super) async fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, VmmError> {
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        let socket: &UnixStream = self.writer.as_ref();
        let fds = [fd.as_raw_fd()];
        let mut sent = 0;
        while sent < line.len() {
            socket
                .writable()
                .await
                .map_err(VmmError::io("the QMP socket"))?;
            // The descriptor goes with the first byte only.
            let rights = [ControlMessage::ScmRights(&fds)];
            let control: &[ControlMessage<'_>] = if sent == 0 { &rights } else { &[] };
            let bytes = &line.as_bytes()[sent..];
            match socket.try_io(Interest::WRITABLE, || {
                sendmsg::<()>(
                    socket.as_raw_fd(),
                    &[IoSlice::new(bytes)],
                    control,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            }) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(VmmError::io("the QMP socket")(e)),
            }
        }
        self.reply(command).await
    }

    async fn read_message(&mut self) -> Result<Value, VmmError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(VmmError::io("the QMP socket"))?;
        if n == 0 {
            return Err(VmmError::Qmp("connection closed".to_owned()));
        }
        serde_json::from_str(&line).map_err(|e| VmmError::Qmp(format!("bad message: {e}")))
    }
}
