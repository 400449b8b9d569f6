//! A real DNS server on loopback whose answers a test changes: Debian's dnsmasq,
//! authoritative for `.test`, answering A records from a hosts directory it re-reads when a
//! file appears in it (inotify), with a TTL of 1 s, and SRV records from its command line.
//! Stopped and started again on the same port, a test sees the server go away and come back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

pub struct Dns {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
    srv: Vec<String>,
}

impl Dns {
    /// dnsmasq on 127.0.0.1, a port of its own; `srv` are `--srv-host` values
    /// (`_http._tcp.chat.test,chat.test,3000`).
    pub fn start(name: &str, srv: &[&str]) -> Dns {
        super::require(&[("dnsmasq", "dnsmasq-base")]);
        let dir = super::temp_dir(name);
        std::fs::create_dir_all(dir.join("hosts")).expect("hosts dir");
        let mut dns = Dns {
            child: None,
            dir,
            port: super::peers::free_port(),
            srv: srv.iter().map(|s| s.to_string()).collect(),
        };
        dns.set("ready.test", &["127.0.0.1"]);
        dns.resume();
        dns
    }

    /// `IP:PORT`, as `--resolver` takes it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Makes `ips` the A records of `name` (none: the name has no address).
    pub fn set(&self, name: &str, ips: &[&str]) {
        let text: String = ips.iter().map(|ip| format!("{ip} {name}\n")).collect();
        // Written beside the directory and renamed into it: dnsmasq reads it whole.
        let tmp = self.dir.join(format!(".{name}"));
        std::fs::write(&tmp, text).expect("write hosts");
        std::fs::rename(&tmp, self.dir.join("hosts").join(name)).expect("rename hosts");
    }

    /// Kills the server: lookups time out.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on its port, and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local=/test/",
            "--local-ttl=1",
            "--user=root",
            "--pid-file=",
            "--log-facility=-",
            "--log-queries",
        ])
        .arg(format!("--port={}", self.port))
        .arg(format!("--hostsdir={}", self.dir.join("hosts").display()));
        for srv in &self.srv {
            cmd.arg(format!("--srv-host={srv}"));
        }
        let log = std::fs::File::create(self.dir.join("dnsmasq.log")).expect("log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dnsmasq");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while self.query_a("ready.test") != Some(1) {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer: {}",
                std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many A records `name` has now, asked over UDP (`None`: no answer).
    pub fn query_a(&self, name: &str) -> Option<u16> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok()?;
        let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        socket.send_to(&query, ("127.0.0.1", self.port)).ok()?;
        let mut answer = [0u8; 512];
        let n = socket.recv(&mut answer).ok()?;
        (n >= 12).then(|| u16::from_be_bytes([answer[6], answer[7]]))
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
