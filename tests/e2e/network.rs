//! End-to-end tests of the container's network through the CLI: the test
//! makes a network namespace with a veth whose other end sits in a second
//! namespace of its own (no traffic leaves them), points the bundle at the
//! first, and checks what the container sees and what crosses the link.
//! Runs on the qemu backend here and on the builtin one (its virtio-net)
//! in the KVM test host.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use husk_tests::cli::{Bundle, Cli};
use husk_tests::cli_or_skip;
use husk_tests::net::{
    in_netns, join_netns, Netns, VethPair, CONTAINER_V4, CONTAINER_V6, MTU, MTU_ROUTE, NEIGHBOUR,
    PEER_BEHIND_ROUTE, PEER_V4, PEER_V6, ROUTE_MTU,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A bundle running `script` in `sh -c` inside the namespace of `netns`.
fn bundle_in(cli: &Cli, netns: &Netns, script: &str) -> Bundle {
    let mut bundle = cli.bundle(&["sh", "-c", script]);
    join_netns(&mut bundle.config, &netns.path());
    bundle.write();
    bundle
}

/// `husk run`, asserting exit 0; its stdout.
fn run_ok(cli: &Cli, bundle: &Bundle, id: &str) -> String {
    let out = cli.output(["run", "--bundle", &bundle.path(), id]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Bytes that differ by position and seed.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_container_gets_the_namespace_addresses_routes_mtu_and_neighbours() {
    let cli = cli_or_skip!();
    let net = VethPair::connected();
    let bundle = bundle_in(
        &cli,
        &net.container,
        "ip -o link; ip -o addr; ip route; ip neigh; cat /sys/class/net/eth0/mtu",
    );

    let out = run_ok(&cli, &bundle, "netcfg");

    assert!(out.contains(&format!("inet {CONTAINER_V4}/24")), "{out}");
    assert!(out.contains(&format!("inet6 {CONTAINER_V6}/64")), "{out}");
    assert!(
        out.contains(&format!("default via {PEER_V4} dev eth0")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{MTU_ROUTE} via {PEER_V4} dev eth0")),
        "{out}"
    );
    let neighbour = format!("{} dev eth0 lladdr {}", NEIGHBOUR.0, NEIGHBOUR.1);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&neighbour) && l.ends_with("PERMANENT")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.trim() == MTU.to_string()), "{out}");
    let mac = net.container.ip_output(&["-o", "link", "show", "eth0"]);
    let mac = mac
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(
        out.contains(&format!("link/ether {mac}")),
        "the guest NIC has the veth's MAC {mac}: {out}"
    );
    let links: Vec<&str> = out.lines().filter(|l| l.contains(": <")).collect();
    assert_eq!(links.len(), 2, "only lo and eth0: {links:?}");
    assert_eq!(net.husk_leftovers(), Vec::<String>::new());
}

/// The MSS the peer sees on a connection from the container.
fn peer_mss(conn: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes an int of `len` bytes into `mss`.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mut mss as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt(TCP_MAXSEG)");
    mss as u32
}

#[test]
fn a_route_keeps_its_own_mtu() {
    let cli = cli_or_skip!();
    let net = VethPair::connected();
    let peer = net.peer.path();
    let accepted = in_netns(&peer, || {
        let behind = TcpListener::bind((PEER_BEHIND_ROUTE, 8084)).unwrap();
        let direct = TcpListener::bind((PEER_V4, 8084)).unwrap();
        std::thread::spawn(move || {
            [behind, direct].map(|listener| {
                let (conn, _) = listener.accept().unwrap();
                peer_mss(&conn)
            })
        })
    });
    let bundle = bundle_in(
        &cli,
        &net.container,
        &format!("echo | nc {PEER_BEHIND_ROUTE} 8084; echo | nc {PEER_V4} 8084"),
    );

    run_ok(&cli, &bundle, "routemtu");

    let [behind, direct] = accepted.join().unwrap();
    // The container's SYN announces the MSS of the route it leaves by.
    assert!(
        behind <= ROUTE_MTU - 40,
        "MSS {behind} through the {ROUTE_MTU}-byte route"
    );
    assert!(
        direct > ROUTE_MTU - 40 && direct <= MTU - 40,
        "MSS {direct} on the link"
    );
}

#[test]
fn a_server_in_the_container_and_one_on_the_peer_are_reached_both_ways_over_v4_and_v6() {
    let cli = cli_or_skip!();
    let net = VethPair::connected();
    let peer = net.peer.path();
    let served = in_netns(&peer, || {
        let v4 = TcpListener::bind((PEER_V4, 8081)).unwrap();
        let v6 = TcpListener::bind((PEER_V6, 8081)).unwrap();
        std::thread::spawn(move || {
            for listener in [v4, v6] {
                let (mut conn, from) = listener.accept().unwrap();
                conn.write_all(format!("peer answers {}\n", from.ip()).as_bytes())
                    .unwrap();
            }
        })
    });
    let bundle = bundle_in(
        &cli,
        &net.container,
        &format!(
            "nc {PEER_V4} 8081; nc {PEER_V6} 8081; \
             echo from-the-container | nc -l -p 8082; echo served"
        ),
    );
    let run = cli
        .husk(["run", "--bundle", &bundle.path(), "servers"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let answer = in_netns(&peer, || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match TcpStream::connect((CONTAINER_V4, 8082)) {
                Ok(mut conn) => {
                    let mut answer = String::new();
                    conn.read_to_string(&mut answer).unwrap();
                    break answer;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("the container's server never answered: {e}"),
            }
        }
    });
    let out = run.wait_with_output().unwrap();

    served.join().unwrap();
    assert_eq!(answer, "from-the-container\n");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("peer answers {CONTAINER_V4}")),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("peer answers {CONTAINER_V6}")),
        "{stdout}"
    );
    assert!(stdout.ends_with("served\n"), "{stdout}");
}

#[test]
fn tcp_transfers_both_ways_arrive_byte_identical() {
    let cli = cli_or_skip!();
    let net = VethPair::connected();
    const LEN: usize = 16 << 20;
    let down = pattern(1, LEN);
    let up_sha = sha256_hex(&pattern(2, LEN));
    // The container sends a file of its volume and hashes what it gets.
    let volume = tempfile::tempdir().unwrap();
    std::fs::write(volume.path().join("up"), pattern(2, LEN)).unwrap();
    let mut bundle = bundle_in(
        &cli,
        &net.container,
        &format!("nc {PEER_V4} 9001 < /data/up; nc -l -p 9002 > /data/down; echo done"),
    );
    bundle.config["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/data", "type": "bind", "source": volume.path(), "options": ["rbind", "rw"]
    }));
    bundle.write();
    let peer = net.peer.path();
    let received = in_netns(&peer, || {
        let listener = TcpListener::bind((PEER_V4, 9001)).unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut bytes = Vec::new();
            conn.read_to_end(&mut bytes).unwrap();
            bytes
        })
    });
    let run = cli
        .husk(["run", "--bundle", &bundle.path(), "transfer"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = received.join().unwrap();
    let sent = in_netns(&peer, move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut conn = loop {
            match TcpStream::connect((CONTAINER_V4, 9002)) {
                Ok(conn) => break conn,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("the container never listened: {e}"),
            }
        };
        conn.write_all(&down).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        down
    });
    let out = run.wait_with_output().unwrap();

    assert_eq!(text(&out.stdout), "done\n", "{}", text(&out.stderr));
    assert_eq!(up.len(), LEN);
    assert_eq!(sha256_hex(&up), up_sha, "container to peer");
    let got = std::fs::read(volume.path().join("down")).unwrap();
    assert_eq!(got.len(), LEN);
    assert!(got == sent, "peer to container: the bytes differ");
}

#[test]
fn an_interface_added_between_create_and_start_is_connected_at_start() {
    let cli = cli_or_skip!();
    let net = VethPair::empty();
    let bundle = bundle_in(
        &cli,
        &net.container,
        &format!("ip -o addr show dev eth0; nc {PEER_V4} 8083"),
    );
    let served = in_netns(&net.peer.path(), || {
        // Bound once the peer has its address: the thread waits for it.
        std::thread::spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            let listener = loop {
                match TcpListener::bind((PEER_V4, 8083)) {
                    Ok(l) => break l,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(e) => panic!("binding the peer's server: {e}"),
                }
            };
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"late peer\n").unwrap();
        })
    });
    let mut run = cli
        .husk(["create", "--bundle", &bundle.path(), "late"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let created = run.wait().unwrap();
    assert!(created.success(), "create failed");

    // What docker 26 does between create and start.
    net.connect();
    let start = cli.output(["start", "late"]);
    assert!(start.status.success(), "{}", text(&start.stderr));
    let mut stdout = String::new();
    run.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    served.join().unwrap();

    assert!(
        stdout.contains(&format!("inet {CONTAINER_V4}/24")),
        "{stdout}"
    );
    assert!(stdout.contains("late peer"), "{stdout}");
    let delete = cli.output(["delete", "--force", "late"]);
    assert!(delete.status.success(), "{}", text(&delete.stderr));
    assert_eq!(net.husk_leftovers(), Vec::<String>::new());
}

#[test]
fn an_engine_namespace_without_interfaces_shows_only_lo() {
    let cli = cli_or_skip!();
    let net = VethPair::empty();
    let bundle = bundle_in(&cli, &net.container, "ip -o link | cut -d: -f2");

    let out = run_ok(&cli, &bundle, "onlylo");

    assert_eq!(out.trim(), "lo", "the standby NIC stays hidden");
    assert_eq!(net.husk_leftovers(), Vec::<String>::new());
}

#[test]
fn a_tun_device_in_the_namespace_is_refused_by_name_and_nothing_is_left() {
    let cli = cli_or_skip!();
    let net = VethPair::connected();
    net.container
        .ip(&["tuntap", "add", "dev", "tun7", "mode", "tun"]);
    net.container
        .ip(&["addr", "add", "10.233.0.1/24", "dev", "tun7"]);
    net.container.ip(&["link", "set", "tun7", "up"]);
    let bundle = bundle_in(&cli, &net.container, "true");

    let out = cli.output(["create", "--bundle", &bundle.path(), "tun"]);

    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("tun7"), "{stderr}");
    assert!(cli.ids().is_empty(), "no state is left");
    assert_eq!(net.husk_leftovers(), Vec::<String>::new());
}

#[test]
fn a_second_container_in_the_same_namespace_is_refused_clearly() {
    let cli = cli_or_skip!();
    let net = VethPair::connected();
    let first = bundle_in(&cli, &net.container, "sleep 1000");
    assert!(cli.detached(["create", "--bundle", &first.path(), "first"]));
    let second = bundle_in(&cli, &net.container, "true");

    let out = cli.output(["create", "--bundle", &second.path(), "second"]);

    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("eth0") && stderr.contains("--network container"),
        "{stderr}"
    );
    assert_eq!(cli.ids(), ["first"]);
    let delete = cli.output(["delete", "--force", "first"]);
    assert!(delete.status.success(), "{}", text(&delete.stderr));
    assert_eq!(net.husk_leftovers(), Vec::<String>::new());
}

#[test]
fn a_network_namespace_path_that_does_not_exist_is_named() {
    let cli = cli_or_skip!();
    let mut bundle = cli.bundle(&["true"]);
    join_netns(
        &mut bundle.config,
        std::path::Path::new("/run/netns/husk-no-such-netns"),
    );
    bundle.write();

    let out = cli.output(["create", "--bundle", &bundle.path(), "nons"]);

    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/run/netns/husk-no-such-netns"),
        "{}",
        text(&out.stderr)
    );
    assert!(cli.ids().is_empty());
}

#[test]
fn delete_force_after_a_killed_monitor_removes_the_redirects() {
    let cli = cli_or_skip!();
    let net = VethPair::connected();
    let bundle = bundle_in(&cli, &net.container, "sleep 1000");
    assert!(cli.detached(["create", "--bundle", &bundle.path(), "killed"]));
    assert!(cli.output(["start", "killed"]).status.success());
    assert!(
        net.container.qdiscs().contains("ingress"),
        "the redirect is in place while it runs"
    );
    let pid = cli.state("killed")["pid"].as_i64().unwrap() as i32;

    // SAFETY: kill takes no pointers; the pid is the test's container.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let delete = cli.output(["delete", "--force", "killed"]);

    assert!(delete.status.success(), "{}", text(&delete.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !net.husk_leftovers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(net.husk_leftovers(), Vec::<String>::new());
}

/// A DNS answer for `query` with one A record, 10.231.0.77.
fn dns_answer(query: &[u8]) -> Vec<u8> {
    let mut answer = query.to_vec();
    answer[2] = 0x81; // response, recursion desired
    answer[3] = 0x80; // recursion available, no error
    answer[6..8].copy_from_slice(&1u16.to_be_bytes());
    answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 231, 0, 77]);
    answer
}

#[test]
fn a_loopback_nameserver_is_answered_through_the_host_namespace() {
    let cli = cli_or_skip!();
    let net = VethPair::connected();
    // What docker's embedded DNS looks like from the container: a resolver
    // on 127.0.0.11 inside the container's own namespace.
    let resolver = in_netns(&net.container.path(), || {
        let socket = UdpSocket::bind("127.0.0.11:53").unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (len, from) = socket.recv_from(&mut buf).unwrap();
            socket.send_to(&dns_answer(&buf[..len]), from).unwrap();
        })
    });
    let files = tempfile::tempdir().unwrap();
    std::fs::write(
        files.path().join("resolv.conf"),
        "nameserver 127.0.0.11\noptions ndots:0\n",
    )
    .unwrap();
    let mut bundle = bundle_in(&cli, &net.container, "nslookup peer.test");
    bundle.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/etc/resolv.conf", "type": "bind",
            "source": files.path().join("resolv.conf"), "options": ["rbind", "ro"]
        }));
    bundle.write();

    let out = run_ok(&cli, &bundle, "dns");

    resolver.join().unwrap();
    assert!(out.contains("10.231.0.77"), "{out}");
}
