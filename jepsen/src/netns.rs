//! A private network for one run: every node in its own network namespace, all joined by
//! a bridge, so faults act on real packets between real addresses.
//!
//! The bridge lives in a namespace of its own (the "switch"), not in the host's: Docker
//! sets the host's FORWARD policy to DROP and `br_netfilter` passes bridged frames through
//! it, so a bridge in the host namespace would carry nothing between nodes. The harness
//! reaches the nodes through one more veth from the host into the switch.
//!
//! Partitions are `nft` drop rules in the receiving node's namespace: packets vanish
//! silently, so peers see real TCP timeouts rather than quick refusals.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Node `i` (0-based) drops every packet coming from the nodes in `grudge[i]`.
pub type Grudge = BTreeMap<usize, BTreeSet<usize>>;

pub struct Net {
    prefix: String,
    subnet: [u8; 3],
    nodes: usize,
}

impl Net {
    /// Creates the switch and `nodes` node namespaces. Names carry our PID so two runs on
    /// one machine never meet, and leftovers of an earlier run with the same PID go first.
    pub fn create(nodes: usize) -> Result<Self> {
        let pid = std::process::id();
        let net = Self {
            prefix: format!("rrj{pid}"),
            // 10.213.0.0/16 is ours; the third octet spreads concurrent runs.
            subnet: [10, 213, (pid % 250) as u8],
            nodes,
        };
        net.destroy();
        net.build().inspect_err(|_| net.destroy())?;
        Ok(net)
    }

    fn build(&self) -> Result<()> {
        let sw = self.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..self.nodes {
            let ns = self.ns(i);
            let port = format!("{}p{i}", self.prefix);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &port, "netns", &sw])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            let cidr = format!("{}/24", self.ip(i));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            nft(
                &ns,
                "add table inet rrj\n\
                 add chain inet rrj input { type filter hook input priority 0; policy accept; }\n",
            )?;
        }
        let host = self.host_if();
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "uplink", "netns", &sw,
        ])?;
        ip(&["-n", &sw, "link", "set", "uplink", "master", "br0", "up"])?;
        let cidr = format!("{}/24", self.host_ip());
        ip(&["addr", "add", &cidr, "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        Ok(())
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn host_if(&self) -> String {
        format!("{}h", self.prefix)
    }

    pub fn ip(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, i as u8 + 1)
    }

    /// The harness's own address on the run's network.
    pub fn host_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// A command that runs `program` inside node `i`'s namespace. `ip netns exec` execs
    /// the program, so the child's PID is the program's: signals reach it directly.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i)]).arg(program);
        cmd
    }

    /// Replaces every node's drop rules with `grudge` (an empty grudge heals).
    pub fn partition(&self, grudge: &Grudge) -> Result<()> {
        for i in 0..self.nodes {
            let mut script = String::from("flush chain inet rrj input\n");
            if let Some(from) = grudge.get(&i).filter(|f| !f.is_empty()) {
                let addrs: Vec<String> = from.iter().map(|j| self.ip(*j).to_string()).collect();
                script += &format!(
                    "add rule inet rrj input ip saddr {{ {} }} drop\n",
                    addrs.join(", ")
                );
            }
            nft(&self.ns(i), &script)?;
        }
        Ok(())
    }

    pub fn heal(&self) -> Result<()> {
        self.partition(&Grudge::new())
    }

    /// Deletes everything this run created; deleting a namespace deletes its veth ends.
    fn destroy(&self) {
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
        let _ = ip(&["link", "del", &self.host_if()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Whether this machine lets us build the network: root, `ip` and `nft`. The reason when
/// not, so callers can say why they skip.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("network namespaces need root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "`{tool}` is not installed (scripts/setup.sh installs it)"
            ));
        }
    }
    None
}

fn ip(args: &[&str]) -> Result<()> {
    run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
}

fn nft(ns: &str, script: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns} failed: {}\nscript:\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
