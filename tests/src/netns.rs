//! Hosts of their own for partition tests: network namespaces on a bridge in the test's
//! namespace, built with `ip netns` (root only). Host `i` is `10.<net>.0.<i+1>` in namespace
//! `scn<id>-<i>`; the bridge (this namespace) is `10.<net>.0.254`, so services the test runs
//! here are reached from the hosts at [`Net::gateway`] and the test itself never addresses a
//! namespace. [`Net::cut`] takes a host's link down (a partition: packets are dropped, no
//! connection is reset), [`Net::heal`] brings it back. Everything is removed on drop.

use std::process::Command;

/// Namespaced hosts on a bridge.
pub struct Net {
    id: String,
    net: u8,
    hosts: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// `hosts` namespaced hosts, or why they cannot be made here (not root, no `ip`).
    pub fn new(hosts: usize) -> Result<Net, String> {
        let pid = std::process::id();
        let net = Net {
            id: format!("{}", pid % 100_000),
            // a /24 of its own per test process
            net: (100 + pid % 150) as u8,
            hosts: 0,
        };
        let mut net = net;
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.gateway()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..hosts {
            let (ns, host_end, ns_end) = (net.ns(i), net.host_end(i), format!("scv{}-{i}", net.id));
            ip(&["netns", "add", &ns])?;
            net.hosts = i + 1;
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ])?;
            ip(&["link", "set", &ns_end, "netns", &ns])?;
            ip(&["link", "set", &host_end, "master", &br])?;
            ip(&["link", "set", &host_end, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                &ns_end,
            ])?;
            ip(&["-n", &ns, "link", "set", &ns_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("scb{}", self.id)
    }

    fn host_end(&self, i: usize) -> String {
        format!("sch{}-{i}", self.id)
    }

    /// The namespace of host `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("scn{}-{i}", self.id)
    }

    /// The address of host `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.net, i + 1)
    }

    /// This namespace's address on the bridge.
    pub fn gateway(&self) -> String {
        format!("10.{}.0.254", self.net)
    }

    /// A command run on host `i` (`ip netns exec`).
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i)]).arg(program);
        c
    }

    /// Partitions host `i` from everyone (its link goes down).
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.host_end(i), "down"]).unwrap();
    }

    /// Ends host `i`'s partition.
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.host_end(i), "up"]).unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &self.host_end(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Namespaced hosts, or `None` after saying why the test is skipped; under
/// `SEQCLUST_REQUIRE_NETNS=1` a missing capability fails the test instead.
pub fn net_or_skip(test: &str, hosts: usize) -> Option<Net> {
    match Net::new(hosts) {
        Ok(n) => Some(n),
        Err(e) => {
            let required = std::env::var("SEQCLUST_REQUIRE_NETNS")
                .is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
            assert!(!required, "{test}: network namespaces are required: {e}");
            eprintln!("skipped {test}: network namespaces need root and `ip netns`: {e}");
            None
        }
    }
}
