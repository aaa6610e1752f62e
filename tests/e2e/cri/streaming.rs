//! ExecSync, streaming Exec (without a tty, stdin to EOF; with a tty and
//! a resize), Attach to a tty container, and an interactive exec left idle.
//! Where a step runs over both transports, both must see the same.

use std::time::Duration;

use husk_tests::cri::fixture::CriFixture;
use husk_tests::cri::pod::{
    container_config, pod_config, wait_container_state, TestPod, CONTAINER_TIMEOUT,
};
use husk_tests::cri::stream::spdy::SpdyCommand;
use husk_tests::cri::stream::websocket::WebSocketCommand;
use husk_tests::cri::stream::{Finished, Output, RemoteCommand, Stdio};
use husk_tests::cri::{logs, Handler};
use k8s_cri::v1::{AttachRequest, ContainerState, ExecRequest};

use super::support::{ensure, expect_eq};

/// How long an interactive exec stays idle: two minutes by the
/// requirement; `HUSK_CRI_IDLE_SECS` shortens it for local iteration.
pub const IDLE: Duration = Duration::from_secs(120);
/// The variable that overrides [`IDLE`].
pub const IDLE_ENV: &str = "HUSK_CRI_IDLE_SECS";
/// How long a session may take to show what it should.
const SESSION: Duration = Duration::from_secs(60);

fn idle_time() -> Duration {
    std::env::var(IDLE_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(IDLE)
}

/// The two transports a streaming call's URL is followed with.
#[derive(Debug, Clone, Copy)]
enum Transport {
    WebSocket,
    Spdy,
}

impl Transport {
    fn open(
        self,
        fixture: &CriFixture,
        url: &str,
        stdio: Stdio,
    ) -> Result<Box<dyn RemoteCommand>, String> {
        let netns = fixture.netns();
        Ok(match self {
            Transport::WebSocket => Box::new(WebSocketCommand::open(&netns, url)?),
            Transport::Spdy => Box::new(SpdyCommand::open(&netns, url, stdio)?),
        })
    }
}

fn exec_request(container: &str, cmd: &[&str], stdio: Stdio) -> ExecRequest {
    ExecRequest {
        container_id: container.to_string(),
        cmd: cmd.iter().map(|a| a.to_string()).collect(),
        tty: stdio.tty,
        stdin: stdio.stdin,
        stdout: stdio.stdout,
        stderr: stdio.stderr && !stdio.tty,
    }
}

/// `Exec` of `cmd`, followed over `transport`.
fn exec(
    fixture: &CriFixture,
    transport: Transport,
    container: &str,
    cmd: &[&str],
    stdio: Stdio,
) -> Result<Box<dyn RemoteCommand>, String> {
    let url = fixture
        .client()
        .exec(&exec_request(container, cmd, stdio))?;
    transport.open(fixture, &url, stdio)
}

/// A pod with one idle container; its id.
fn pod_with_a_shell<'f>(
    fixture: &'f CriFixture,
    handler: Handler,
    name: &str,
) -> Result<(TestPod<'f>, String), String> {
    let pod = TestPod::run(fixture, handler, pod_config(fixture, name)?)?;
    let shell = pod.start(&container_config("shell", &["sleep", "3600"]))?;
    Ok((pod, shell))
}

/// ExecSync's streams and exit code (and its timeout); Exec without a tty
/// over SPDY with stdin to EOF (`cat` ends) and over WebSocket (stdin
/// echoed); the same exit code and streams over both; Exec with a tty and
/// a resize over both.
pub fn exec_sync_and_streaming_exec(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let (pod, shell) = pod_with_a_shell(fixture, handler, "exec")?;
    let client = fixture.client();
    let out = client.exec_sync(&shell, &["sh", "-c", "echo out; echo err >&2; exit 3"], 30)?;
    expect_eq("ExecSync's stdout", out.stdout.as_slice(), b"out\n")?;
    expect_eq("ExecSync's stderr", out.stderr.as_slice(), b"err\n")?;
    expect_eq("ExecSync's exit code", out.exit_code, 3)?;
    let started = std::time::Instant::now();
    let timed_out = client.exec_sync(&shell, &["sleep", "30"], 2);
    ensure(started.elapsed() < Duration::from_secs(25), || {
        format!(
            "ExecSync with a 2 s timeout took {:?}: {timed_out:?}",
            started.elapsed()
        )
    })?;
    ensure(
        timed_out.as_ref().map_or(true, |o| o.exit_code != 0),
        || format!("ExecSync of sleep 30 with a 2 s timeout succeeded: {timed_out:?}"),
    )?;

    let piped = Stdio {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let mut cat = exec(fixture, Transport::Spdy, &shell, &["cat"], piped)?;
    cat.write_stdin(b"line one\n")?;
    cat.wait_output(Output::Stdout, "line one\n", SESSION)?;
    cat.write_stdin(b"line two\n")?;
    cat.close_stdin()?;
    let finished = cat.finish(SESSION)?;
    expect_finished(
        "cat over SPDY, stdin closed",
        &finished,
        "line one\nline two\n",
        "",
        0,
    )?;

    let mut echo = exec(fixture, Transport::WebSocket, &shell, &["cat"], piped)?;
    echo.write_stdin(b"ping over websocket\n")?;
    echo.wait_output(Output::Stdout, "ping over websocket\n", SESSION)?;
    ensure(echo.close_stdin().is_err(), || {
        "WebSocket v4 closed stdin alone".into()
    })?;
    echo.detach();

    let script = ["sh", "-c", "echo to-out; echo to-err >&2; exit 7"];
    let no_stdin = Stdio {
        stdin: false,
        ..piped
    };
    for transport in [Transport::WebSocket, Transport::Spdy] {
        let finished = exec(fixture, transport, &shell, &script, no_stdin)?.finish(SESSION)?;
        expect_finished(
            &format!("exit 7 over {transport:?}"),
            &finished,
            "to-out\n",
            "to-err\n",
            7,
        )?;
    }

    let tty = Stdio {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    // The resize travels apart from stdin: ask for the size until it shows.
    let script = [
        "sh",
        "-c",
        "tty; while read line; do stty size; [ \"$line\" = end ] && exit 4; done",
    ];
    for transport in [Transport::WebSocket, Transport::Spdy] {
        let mut session = exec(fixture, transport, &shell, &script, tty)?;
        session.resize(100, 30)?;
        let mut resized = Err(String::new());
        for _ in 0..30 {
            session.write_stdin(b"go\r")?;
            resized = session.wait_output(Output::Stdout, "30 100\r\n", Duration::from_secs(1));
            if resized.is_ok() {
                break;
            }
        }
        resized.map_err(|e| format!("the resize over {transport:?} never showed: {e}"))?;
        session.write_stdin(b"end\r")?;
        let finished = session.finish(SESSION)?;
        let shown = finished.stdout_text();
        ensure(
            shown.contains("30 100\r\n") && shown.contains("/dev/pts/"),
            || format!("the tty exec over {transport:?} showed {shown:?}, not its size and tty"),
        )?;
        expect_eq(
            &format!("the tty exec's exit over {transport:?}"),
            finished.exit,
            Ok(4),
        )?;
    }
    pod.remove()
}

fn expect_finished(
    what: &str,
    finished: &Finished,
    stdout: &str,
    stderr: &str,
    code: i32,
) -> Result<(), String> {
    expect_eq(
        &format!("{what}: stdout"),
        finished.stdout_text().as_str(),
        stdout,
    )?;
    expect_eq(
        &format!("{what}: stderr"),
        finished.stderr_text().as_str(),
        stderr,
    )?;
    expect_eq(&format!("{what}: exit"), finished.exit.clone(), Ok(code))
}

/// Attach to a container started with a tty and stdin: what is typed runs,
/// the container outlives a detach, a second attach (over the other
/// transport) ends it, ContainerStatus reports its exit code, and its log
/// has what the terminal showed.
pub fn attach_to_a_tty_container(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let pod = TestPod::run(fixture, handler, pod_config(fixture, "attach")?)?;
    let mut config = container_config("tty", &["sh"]);
    config.tty = true;
    config.stdin = true;
    let id = pod.start(&config)?;
    let request = AttachRequest {
        container_id: id.clone(),
        stdin: true,
        tty: true,
        stdout: true,
        stderr: false,
    };
    let stdio = Stdio {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };

    let url = fixture.client().attach(&request)?;
    let mut first = Transport::WebSocket.open(fixture, &url, stdio)?;
    first.write_stdin(b"echo attached-$((6*7))\n")?;
    first.wait_output(Output::Stdout, "attached-42", SESSION)?;
    first.detach();
    std::thread::sleep(Duration::from_secs(1));
    wait_container_state(
        fixture.client(),
        &id,
        ContainerState::ContainerRunning,
        Duration::ZERO,
    )
    .map_err(|e| format!("after a detach: {e}"))?;

    let url = fixture.client().attach(&request)?;
    let mut second = Transport::Spdy.open(fixture, &url, stdio)?;
    second.write_stdin(b"echo again-$((7*6))\n")?;
    second.wait_output(Output::Stdout, "again-42", SESSION)?;
    second.write_stdin(b"exit 5\n")?;
    let status = wait_container_state(
        fixture.client(),
        &id,
        ContainerState::ContainerExited,
        CONTAINER_TIMEOUT,
    )?;
    second.detach();
    expect_eq("the attached container's exit code", status.exit_code, 5)?;
    let entries = logs::read(std::path::Path::new(&status.log_path))?;
    let shown = logs::lines_of(&entries, "stdout").join("\n");
    ensure(
        shown.contains("attached-42") && shown.contains("again-42"),
        || format!("the tty container's log lacks what it showed: {shown:?}"),
    )?;
    pod.remove()
}

/// An interactive exec (tty, stdin) that answers, stays idle for [`IDLE`],
/// then still answers and exits cleanly.
pub fn idle_interactive_exec(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let (pod, shell) = pod_with_a_shell(fixture, handler, "idle-exec")?;
    let tty = Stdio {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let mut session = exec(fixture, Transport::WebSocket, &shell, &["sh"], tty)?;
    session.write_stdin(b"echo before-$((1+1))\n")?;
    session.wait_output(Output::Stdout, "before-2", SESSION)?;
    let idle = idle_time();
    std::thread::sleep(idle);
    session.write_stdin(b"echo after-$((2+2))\n")?;
    session
        .wait_output(Output::Stdout, "after-4", SESSION)
        .map_err(|e| format!("after {idle:?} idle: {e}"))?;
    session.write_stdin(b"exit\n")?;
    let finished = session.finish(SESSION)?;
    expect_eq("the idle session's exit", finished.exit, Ok(0))?;
    pod.remove()
}
