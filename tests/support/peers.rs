//! Real peers from Debian's packages, run as processes for one test: HAProxy and nginx in
//! front of wssbridge or behind it. Each gets its own directory and ports, and runs in a
//! process group of its own, killed whole on drop (nginx's workers too, which outlive a
//! master killed alone), its directory removed. The tests that use them need `haproxy` and
//! `nginx` installed (`.ci/run` does).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

/// A port that nothing uses on any address, TCP or UDP (bound, then closed), taken below
/// the kernel's ephemeral range (32768 and up on Linux). A port the kernel handed out
/// (`bind(0)`) is the very kind it hands again to the next outgoing connection of another
/// test, and then a `--listen 0.0.0.0:PORT` started a moment later finds it in use (CI
/// caught that once); below the range only another test's pick can collide, and each pick
/// starts somewhere new.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static PICKS: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 32_768 - FIRST;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(nanos)
        .wrapping_add(PICKS.fetch_add(1, Ordering::Relaxed).wrapping_mul(7_919));
    for step in 0..SPAN {
        let port = (FIRST + (seed.wrapping_add(step) % SPAN)) as u16;
        let free = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
            && std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free port between {FIRST} and 32767");
}

pub struct Peer {
    child: Child,
    pub dir: PathBuf,
}

impl Peer {
    /// HAProxy with `config` (the global and defaults sections are added), in the
    /// foreground; returns once `port` accepts.
    pub fn haproxy(name: &str, config: &str, port: u16) -> Peer {
        let dir = scratch(name);
        let file = dir.join("haproxy.cfg");
        let whole = format!(
            "global\n    log stderr format raw local0 warning\n\
             defaults\n    log global\n    timeout connect 5s\n    timeout client 30s\n    \
             timeout server 30s\n{config}\n"
        );
        std::fs::write(&file, whole).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start haproxy (apt-get install haproxy)");
        Peer::ready(child, dir, port)
    }

    /// nginx with `http` as its http block, in the foreground; returns once `port` accepts.
    pub fn nginx(name: &str, http: &str, port: u16) -> Peer {
        let dir = scratch(name);
        let file = dir.join("nginx.conf");
        let d = dir.display();
        let whole = format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    \
             proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
             uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{http}\n}}\n"
        );
        std::fs::write(&file, whole).expect("write nginx.conf");
        let child = Command::new("nginx")
            .args(["-g", "daemon off;", "-c"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start nginx (apt-get install nginx-light)");
        Peer::ready(child, dir, port)
    }

    fn ready(mut child: Child, dir: PathBuf, port: u16) -> Peer {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("peer exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "peer never listened on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Peer { child, dir }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The whole group: the peer's pid is its group's id.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "peer-{name}-{}-{}",
        std::process::id(),
        super::peers_serial()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("peer dir");
    dir
}
