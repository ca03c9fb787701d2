//! `hearth template build` from Dockerfiles and images, against real build
//! microVMs (QEMU; TCG here). Needs root, the kernel and the `base`
//! template; CI runs these with `--include-ignored`. Images come from a
//! real registry (Debian's `docker-registry`) started by the test, filled
//! with `umoci` and `skopeo`, offline.

mod common;

use common::{assert_nothing_left, data_dir, text};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The leak checks are host-wide, so VM tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn hearth() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
    cmd.env("HEARTH_DATA_DIR", data_dir())
        .env("HEARTH_LOG", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    hearth().args(args).output().expect("hearth runs")
}

/// `hearth ARGS`, which must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "hearth {args:?} failed: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Holds the serial lock; on drop, asserts the host is clean.
struct Clean(#[allow(dead_code)] MutexGuard<'static, ()>);

fn serial() -> Clean {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_nothing_left("before the test");
    Clean(guard)
}

impl Drop for Clean {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_nothing_left("after the test");
            let builds: Vec<_> = std::fs::read_dir(data_dir().join("builds"))
                .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(builds.is_empty(), "build VM directories left: {builds:?}");
        }
    }
}

/// Removes a template when the test ends, however it ends.
struct Template(&'static str);

impl Drop for Template {
    fn drop(&mut self) {
        let _ = run(&["template", "rm", self.0]);
    }
}

fn write(dir: &Path, name: &str, contents: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

const APP: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"served by the start command\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", 8000), H).serve_forever()
"#;

/// A Dockerfile whose steps no earlier run has cached (`nonce`).
fn dockerfile(nonce: &str, last_run: &str) -> String {
    format!(
        r#"# a web app on the Debian base
FROM base
ENV NONCE={nonce}
ARG GREETING=hello
ENV APP_HOME=/srv/app \
    MODE=test
WORKDIR /srv/app
COPY --chown=user:user app.py ./
COPY data/ ./data/
RUN echo "$GREETING as $(id -un)" > built.txt && ls -ln app.py >> built.txt && echo kept > /tmp/from-run
USER user
RUN {last_run}
EXPOSE 8000
CMD ["python3", "/srv/app/app.py"]
HEALTHCHECK CMD python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000')"
"#
    )
}

fn build(name: &str, context: &Path) -> (Output, Duration) {
    let started = Instant::now();
    let out = run(&[
        "template",
        "build",
        name,
        "-f",
        context.join("Dockerfile").to_str().unwrap(),
        "--build-arg",
        "GREETING=hi",
    ]);
    (out, started.elapsed())
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn a_dockerfile_builds_in_vms_caches_its_steps_and_serves_on_first_request() {
    let _clean = serial();
    let _template = Template("webapp");
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "app.py", APP);
    write(ctx.path(), "data/a.txt", "A\n");
    write(ctx.path(), "data/sub/b.txt", "B\n");
    write(ctx.path(), "data/skip.log", "ignored\n");
    write(ctx.path(), ".dockerignore", "**/*.log\n");
    // Steps no earlier run has cached.
    let nonce = format!(
        "{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    write(
        ctx.path(),
        "Dockerfile",
        &dockerfile(&nonce, "whoami > /home/user/who.txt"),
    );

    let (first, first_time) = build("webapp", ctx.path());
    let log = text(&first.stderr);
    assert!(first.status.success(), "first build failed:\n{log}");
    assert!(log.contains("step 6/8 RUN echo"), "{log}");

    // The sandbox starts from the snapshot with the app already serving.
    let out = run(&[
        "sandbox",
        "run",
        "--template",
        "webapp",
        "--",
        "sh",
        "-c",
        "cat built.txt /home/user/who.txt; ls data data/sub; cat /tmp/from-run; \
         curl -s http://127.0.0.1:8000/; echo \"$APP_HOME $MODE $(pwd) $(id -un)\"",
    ]);
    let got = text(&out.stdout);
    assert!(out.status.success(), "{got}\n{}", text(&out.stderr));
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "hi as root", "{got}");
    // COPY --chown=user:user: uid and gid 1000 in the base.
    assert!(lines[1].contains(" 1000 1000 "), "{got}");
    assert_eq!(lines[2], "user", "{got}");
    assert!(got.contains("a.txt\nsub\n"), "{got}");
    assert!(!got.contains("skip.log"), ".dockerignore ignored: {got}");
    assert!(got.contains("b.txt\n"), "{got}");
    // What a RUN leaves in /tmp is part of the template, as in Docker.
    assert!(got.contains("\nkept\n"), "{got}");
    assert!(got.contains("served by the start command\n"), "{got}");
    assert!(got.ends_with("/srv/app test /srv/app user\n"), "{got}");

    let listed = ok(&["template", "list"]);
    let row = listed
        .lines()
        .find(|l| l.starts_with("webapp "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        row.contains("8000/tcp") && row.contains("Dockerfile"),
        "{row}"
    );

    // Nothing changed: every step from the cache, the same build.
    let (again, again_time) = build("webapp", ctx.path());
    let log = text(&again.stderr);
    assert!(again.status.success(), "{log}");
    assert!(log.contains("8 of 8 steps cached"), "{log}");
    eprintln!(
        "figures: first build {:.1} s, unchanged rebuild {:.1} s",
        first_time.as_secs_f64(),
        again_time.as_secs_f64()
    );

    // The last RUN changed: the steps before it come from the cache.
    write(
        ctx.path(),
        "Dockerfile",
        &dockerfile(
            &nonce,
            "whoami > /home/user/who.txt; echo 2 >> /home/user/who.txt",
        ),
    );
    let (changed, changed_time) = build("webapp", ctx.path());
    let log = text(&changed.stderr);
    assert!(changed.status.success(), "{log}");
    assert!(
        log.contains("RUN echo \"$GREETING") && log.contains("(cached)"),
        "{log}"
    );
    assert!(log.contains("7 of 8 steps cached"), "{log}");
    eprintln!(
        "figures: last step changed {:.1} s",
        changed_time.as_secs_f64()
    );
    let out = ok(&[
        "sandbox",
        "run",
        "--template",
        "webapp",
        "--",
        "cat",
        "/home/user/who.txt",
    ]);
    assert_eq!(out, "user\n2\n");
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn a_failing_run_names_its_line_and_leaves_nothing() {
    let _clean = serial();
    let _template = Template("broken");
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM base\nRUN echo first-output && echo to-stderr >&2 && exit 3\n",
    );
    let (out, _) = build("broken", ctx.path());
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(err.contains("status 3"), "{err}");
    assert!(err.contains("to-stderr"), "{err}");
    let listed = ok(&["template", "list"]);
    assert!(!listed.contains("broken"), "{listed}");

    // Bad input is refused before any VM boots.
    write(
        ctx.path(),
        "Dockerfile",
        "FROM base\nCOPY ../etc/passwd /x\n",
    );
    let (out, _) = build("broken", ctx.path());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Dockerfile:2"),
        "{}",
        text(&out.stderr)
    );
    write(
        ctx.path(),
        "Dockerfile",
        "FROM base AS one\nRUN true\nFROM base\n",
    );
    let (out, _) = build("broken", ctx.path());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Dockerfile:3"),
        "{}",
        text(&out.stderr)
    );
}

/// Debian's `docker-registry` on a free loopback port, storing in `dir`.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts (apt-get install docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
#[ignore = "boots VMs as root: run with --include-ignored"]
fn a_busybox_image_from_a_registry_runs_commands_without_bash() {
    let _clean = serial();
    let _template = Template("bbox");
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path());
    let d = dir.path().display();
    // A busybox-only image: one layer with the static busybox and its
    // applet links, a config with Env and Cmd.
    sh(&format!(
        "set -e; cd {d}; umoci init --layout oci; umoci new --image oci:bb; \
         umoci unpack --rootless --image oci:bb bundle; \
         mkdir -p bundle/rootfs/bin bundle/rootfs/etc; cp /bin/busybox bundle/rootfs/bin/; \
         for a in sh ls cat echo id env sleep; do ln -s busybox bundle/rootfs/bin/$a; done; \
         printf 'root:x:0:0:root:/root:/bin/sh\\n' > bundle/rootfs/etc/passwd; \
         umoci repack --image oci:bb bundle; \
         umoci config --image oci:bb --config.env GREETING=from-image --config.cmd sh; \
         skopeo copy --quiet --dest-tls-verify=false oci:oci:bb docker://{}/test/busybox:1",
        registry.addr
    ));
    let reference = format!("{}/test/busybox:1", registry.addr);
    ok(&["template", "build", "bbox", "--from-image", &reference]);
    // The SDKs ask for `/bin/bash -l -c`; /bin/sh stands in.
    let out = ok(&[
        "sandbox",
        "run",
        "--template",
        "bbox",
        "--",
        "/bin/bash",
        "-l",
        "-c",
        "echo $GREETING; id -un; ls /usr/sbin",
    ]);
    assert_eq!(out, "from-image\nuser\nhearth-init\n");
}
