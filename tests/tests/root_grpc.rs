//! Root tests of gRPC through the L7 proxy with real gRPC servers and a real gRPC client
//! (grpcio, from `scripts/setup`): plaintext HTTP/2 from the client, an h2c pool to the
//! backends, and the pool's gRPC health checks (`kind = "grpc"`) taking a NOT_SERVING backend
//! out and bringing it back, so clients never hear NOT_SERVING.
use std::time::Duration;

use anyhow::Result;
use sluice_tests::{
    netns::Topology,
    servers::{GRPC_PYTHON, GrpcServer, Lbd, TempDir, grpc_script, wait_for},
};

const VIP: &str = "198.19.0.7";
const PORT: u16 = 50051;

struct Bed {
    _lbd: Lbd,
    servers: Vec<GrpcServer>,
    topology: Topology,
    _dir: TempDir,
}

impl Bed {
    fn new(name: &str) -> Result<Bed> {
        let topology = Topology::new(2)?;
        let dir = TempDir::new(name)?;
        let servers =
            topology.backends.iter().map(|b| GrpcServer::start(b, PORT)).collect::<Result<Vec<_>>>()?;
        topology.lb.run("ip", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let (b1, b2) = (topology.backends[0].addr4, topology.backends[1].addr4);
        let config = dir.0.join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                r#"[dataplane]
interface = "eth0"
xdp_mode = "generic"
pin_dir = "/sys/fs/bpf/{tag}"

[[vip]]
name = "grpc"
address = "{VIP}"
port = 80
protocol = "tcp"
pool = "grpc"
mode = "l7"

[[pool]]
name = "grpc"
backends = [{{ address = "{b1}" }}, {{ address = "{b2}" }}]
port = {PORT}
protocol = "h2c"
health = {{ kind = "grpc", port = {PORT}, interval_ms = 300, timeout_ms = 250, rise = 1, fall = 2 }}

[[listener]]
name = "plain"
address = "{VIP}:80"

[[route]]
listener = "plain"
pool = "grpc"

[admin]
socket = "{dir}/lbd.sock"
metrics = "127.0.0.1:9100"
"#,
                tag = topology.tag,
                dir = dir.0.display(),
            ),
        )?;
        let lbd = Lbd::start(&topology.lb, &config)?;
        wait_for("the listener", Duration::from_secs(5), || {
            topology.lb.run("ss", &["-Htln", "sport = :80"]).map(|o| !o.stdout.is_empty()).unwrap_or(false)
        })?;
        Ok(Bed { _lbd: lbd, servers, topology, _dir: dir })
    }

    /// `count` gRPC health checks of `service` from the client, through the proxy, on one
    /// channel: each answer's status name.
    fn check(&self, service: &str, count: usize) -> Result<Vec<String>> {
        let out = self.topology.client.run(
            GRPC_PYTHON,
            &[&grpc_script("health_check.py"), &format!("{VIP}:80"), service, &count.to_string()],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
    }

    /// Whether lbd has backend `i` up in the pool (its metrics).
    fn up(&self, i: usize) -> bool {
        let backend = self.topology.backends[i].addr4;
        let wanted = format!("sluice_backend_up{{pool=\"grpc\",backend=\"{backend}\"}} 1");
        self.topology
            .lb
            .run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == wanted))
    }
}

#[test]
fn root_grpc_through_the_proxy_and_grpc_health_checks() -> Result<()> {
    let bed = Bed::new("grpc")?;
    // gRPC from a real client to real servers, through an h2c pool (both backends in turn).
    assert_eq!(bed.check("", 6)?, ["SERVING"; 6]);
    assert_eq!(bed.check("sluice.Echo", 2)?, ["SERVING"; 2]);
    assert_eq!(bed.check("nothing.Here", 1)?, ["NOT_FOUND"], "the server's own answer passes through");
    // Backend 1 says NOT_SERVING: the health checks take it out, and clients, answered by
    // backend 2 alone, hear SERVING.
    bed.servers[0].serving(false);
    wait_for("backend 1 taken out", Duration::from_secs(5), || !bed.up(0))?;
    assert!(bed.up(1), "backend 2 is still SERVING");
    assert_eq!(bed.check("", 6)?, ["SERVING"; 6]);
    // SERVING again: back in.
    bed.servers[0].serving(true);
    wait_for("backend 1 back", Duration::from_secs(5), || bed.up(0))?;
    Ok(())
}
