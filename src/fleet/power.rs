//! Power and boot-device control through the nodes' BMCs, many at once.
//!
//! Two protocols: IPMI v2.0 over LAN (RMCP+), spoken by the system's `ipmitool -I lanplus`
//! (as xCAT, Warewulf and seed 000 drive it), and DMTF Redfish over HTTP(S), spoken here with
//! `ureq`: `/redfish/v1/Systems`, the `ComputerSystem.Reset` action and a PATCH of the
//! system's `Boot` object. Each node's BMC address, protocol, user and password file come
//! from the node database ([`crate::catalog::nodes::BmcAccess`]).
//!
//! The password is read from its file at each use and goes nowhere else: ipmitool reads the
//! file itself (`-f FILE`, never `-P`, so it is not on a command line `ps` shows), and a
//! Redfish request carries it only in its `Authorization` header. No message here quotes it.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;

use super::exec::fan_out;
use crate::catalog::nodes::{BmcProtocol, NodeEntry};
use crate::progress::Progress;

/// Where a node's next boot goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootTarget {
    Pxe,
    Disk,
}

impl BootTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            BootTarget::Pxe => "pxe",
            BootTarget::Disk => "disk",
        }
    }
}

/// What is done to each node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    On,
    /// Hard power off (IPMI `power off`, Redfish `ForceOff`).
    Off,
    /// Off, then on; a node that is off is just turned on.
    Cycle,
    /// Hard reset (IPMI `power reset`, Redfish `ForceRestart`).
    Reset,
    /// Boot the node now whatever its state: on when it is off, else a hard reset (xCAT's
    /// `rpower boot`). What `aurum reinstall` does.
    Boot,
    Status,
    /// The next boot's device; `persistent`: every boot after too; `uefi`: an EFI boot.
    Bootdev {
        target: BootTarget,
        persistent: bool,
        uefi: bool,
    },
}

/// How a node's BMC request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// The node database has no BMC (or no user or password file) for the node.
    NoBmc,
    /// No answer from the BMC (wrong address, network, service off).
    Unreachable,
    /// The BMC refused the user or password.
    AuthFailed,
    /// Over the per-node time limit.
    Timeout,
    /// The BMC answered with an error.
    Failed,
}

/// One node's result.
#[derive(Clone, Debug, Serialize)]
pub struct PowerResult {
    pub node: String,
    /// The BMC's address, when the node has one.
    pub bmc: Option<String>,
    pub protocol: Option<BmcProtocol>,
    pub status: Outcome,
    /// `on` or `off`, when known (status, cycle and boot ask for it).
    pub power: Option<String>,
    /// What was done, or what went wrong and what to do.
    pub message: String,
    pub seconds: f64,
}

/// How the BMCs are worked on.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// BMCs talked to at once.
    pub fanout: usize,
    /// The longest one node's request may take (every exchange with its BMC included).
    pub timeout: Duration,
}

/// A failed request: its kind and the message.
#[derive(Debug)]
struct Fail(Outcome, String);

type Res<T> = std::result::Result<T, Fail>;

/// Applies `action` to the BMC of each of `names` (looked up in `inventory`), in parallel;
/// results in the order of `names`.
pub fn run(
    names: &[String],
    inventory: &[NodeEntry],
    action: Action,
    opts: &Options,
    progress: &dyn Progress,
) -> Vec<PowerResult> {
    progress.phase("BMCs", Some(names.len() as u64), false);
    let results = fan_out(names, opts.fanout, progress, |name| {
        match inventory.iter().find(|n| &n.name == name) {
            Some(n) => apply(n, action, opts.timeout),
            None => PowerResult {
                node: name.clone(),
                bmc: None,
                protocol: None,
                status: Outcome::NoBmc,
                power: None,
                message: format!(
                    "not in the node database, so its BMC is unknown: `aurum node add {name} --mac MAC --bmc ADDR ...`"
                ),
                seconds: 0.0,
            },
        }
    });
    progress.finish();
    results
}

/// Applies `action` to node `n`'s BMC, within `timeout`.
pub fn apply(n: &NodeEntry, action: Action, timeout: Duration) -> PowerResult {
    let start = Instant::now();
    let done = Bmc::of(n, timeout).and_then(|b| b.act(action));
    let (status, power, message) = match done {
        Ok((power, message)) => (Outcome::Ok, power, message),
        Err(Fail(outcome, message)) => (outcome, None, message),
    };
    PowerResult {
        node: n.name.clone(),
        bmc: n.bmc.clone(),
        protocol: n.bmc.as_ref().map(|_| n.bmc_access.protocol()),
        status,
        power,
        message,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// A node's BMC, ready to be talked to.
struct Bmc<'a> {
    node: &'a str,
    addr: &'a str,
    protocol: BmcProtocol,
    user: &'a str,
    password_file: &'a Path,
    ca_file: Option<&'a str>,
    deadline: Instant,
    timeout: Duration,
}

impl<'a> Bmc<'a> {
    fn of(n: &'a NodeEntry, timeout: Duration) -> Res<Bmc<'a>> {
        let fix = |what: &str| {
            Fail(
                Outcome::NoBmc,
                format!(
                    "{what}: `aurum node set {} --bmc ADDR --bmc-protocol ipmi|redfish --bmc-user USER --bmc-password-file FILE`",
                    n.name
                ),
            )
        };
        let b = &n.bmc_access;
        let addr = n.bmc.as_deref().ok_or_else(|| fix("the node has no BMC"))?;
        let user = b
            .bmc_user
            .as_deref()
            .ok_or_else(|| fix("the node's BMC has no user"))?;
        let password_file = b
            .bmc_password_file
            .as_deref()
            .ok_or_else(|| fix("the node's BMC has no password file"))?;
        Ok(Bmc {
            node: &n.name,
            addr,
            protocol: b.protocol(),
            user,
            password_file: Path::new(password_file),
            ca_file: b.bmc_ca_file.as_deref(),
            deadline: Instant::now() + timeout,
            timeout,
        })
    }

    /// Does `action`; returns the power state when it was read, and what was done.
    fn act(&self, action: Action) -> Res<(Option<String>, String)> {
        let word = |on: bool| if on { "on" } else { "off" }.to_string();
        match action {
            Action::Status => {
                let on = self.is_on()?;
                Ok((Some(word(on)), word(on)))
            }
            Action::On => self.power(Op::On).map(|_| (None, "power on sent".into())),
            Action::Off => self.power(Op::Off).map(|_| (None, "power off sent".into())),
            Action::Reset => self.power(Op::Reset).map(|_| (None, "reset sent".into())),
            Action::Cycle | Action::Boot => {
                let on = self.is_on()?;
                let (op, said) = match (on, action) {
                    (false, _) => (Op::On, "was off: power on sent"),
                    (true, Action::Cycle) => (Op::Cycle, "power cycle sent"),
                    (true, _) => (Op::Reset, "was on: reset sent"),
                };
                self.power(op).map(|_| (Some(word(on)), said.to_string()))
            }
            Action::Bootdev {
                target,
                persistent,
                uefi,
            } => {
                self.bootdev(target, persistent, uefi)?;
                Ok((
                    None,
                    format!(
                        "next boot{}: {}{}",
                        if persistent { "s" } else { "" },
                        target.as_str(),
                        if uefi { " (UEFI)" } else { "" }
                    ),
                ))
            }
        }
    }

    fn is_on(&self) -> Res<bool> {
        match self.protocol {
            BmcProtocol::Ipmi => {
                let out = self.ipmitool(&["chassis", "power", "status"])?;
                if out.contains("Chassis Power is on") {
                    Ok(true)
                } else if out.contains("Chassis Power is off") {
                    Ok(false)
                } else {
                    Err(Fail(
                        Outcome::Failed,
                        format!("ipmitool said no power state: `{}`", out.trim()),
                    ))
                }
            }
            BmcProtocol::Redfish => self.redfish()?.is_on(),
        }
    }

    fn power(&self, op: Op) -> Res<()> {
        match self.protocol {
            BmcProtocol::Ipmi => self.ipmitool(&["chassis", "power", op.ipmi()]).map(drop),
            BmcProtocol::Redfish => self.redfish()?.reset(op),
        }
    }

    fn bootdev(&self, target: BootTarget, persistent: bool, uefi: bool) -> Res<()> {
        match self.protocol {
            BmcProtocol::Ipmi => {
                let options: Vec<&str> = [(persistent, "persistent"), (uefi, "efiboot")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, o)| *o)
                    .collect();
                let options = format!("options={}", options.join(","));
                let mut args = vec!["chassis", "bootdev", target.as_str()];
                if persistent || uefi {
                    args.push(&options);
                }
                self.ipmitool(&args).map(drop)
            }
            BmcProtocol::Redfish => self.redfish()?.bootdev(target, persistent, uefi),
        }
    }

    fn left(&self) -> Res<Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| self.timed_out())
    }

    fn timed_out(&self) -> Fail {
        Fail(
            Outcome::Timeout,
            format!(
                "the BMC at {} did not finish within {} s (--timeout)",
                self.addr,
                self.timeout.as_secs()
            ),
        )
    }

    fn unreachable(&self, why: &str) -> Fail {
        Fail(
            Outcome::Unreachable,
            format!(
                "no answer from the BMC at {} ({why}): check the address (`aurum node show {}`), the network, and that {} is enabled on the BMC",
                self.addr,
                self.node,
                match self.protocol {
                    BmcProtocol::Ipmi => "IPMI over LAN (UDP port 623)",
                    BmcProtocol::Redfish => "Redfish",
                }
            ),
        )
    }

    fn refused(&self) -> Fail {
        Fail(
            Outcome::AuthFailed,
            format!(
                "the BMC at {} refused user {} with the password in {}: check both (`aurum node set {} --bmc-user USER --bmc-password-file FILE`)",
                self.addr,
                self.user,
                self.password_file.display(),
                self.node
            ),
        )
    }

    /// Checks the password file can be read, without keeping its content.
    fn check_password_file(&self) -> Res<()> {
        std::fs::File::open(self.password_file)
            .map(drop)
            .map_err(|e| self.unreadable(e))
    }

    fn unreadable(&self, e: std::io::Error) -> Fail {
        Fail(
            Outcome::NoBmc,
            format!(
                "cannot read the BMC password file {} ({e}): fix it or `aurum node set {} --bmc-password-file FILE`",
                self.password_file.display(),
                self.node
            ),
        )
    }
}

/// A power request.
#[derive(Clone, Copy, Debug)]
enum Op {
    On,
    Off,
    Cycle,
    Reset,
}

impl Op {
    fn ipmi(self) -> &'static str {
        match self {
            Op::On => "on",
            Op::Off => "off",
            Op::Cycle => "cycle",
            Op::Reset => "reset",
        }
    }

    fn redfish(self) -> &'static str {
        match self {
            Op::On => "On",
            Op::Off => "ForceOff",
            Op::Cycle => "PowerCycle",
            Op::Reset => "ForceRestart",
        }
    }
}

/// `(host, port)` of `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT` (a bare IPv6 address has
/// no port).
fn host_port(addr: &str) -> (&str, Option<&str>) {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':'));
        }
    }
    match addr.split_once(':') {
        Some((host, port)) if !port.contains(':') => (host, Some(port)),
        _ => (addr, None),
    }
}

// ---- IPMI, through ipmitool ----

/// ipmitool's verbose chatter, dropped from error messages.
const IPMITOOL_NOISE: [&str; 5] = [
    "Loading IANA PEN Registry",
    "Running Get VSO Capabilities",
    "Discovered IPMB address",
    "Invalid completion code received: Invalid command",
    "Unable to Get Channel Cipher Suites",
];

impl Bmc<'_> {
    /// Runs `ipmitool -I lanplus ... ARGS` against the BMC; its standard output.
    ///
    /// The RMCP+ cipher suite is given rather than discovered (a BMC that does not answer
    /// ipmitool's discovery costs it 10 s of retries): 17 (HMAC-SHA256, AES-128, what
    /// current BMCs use), then 3 (HMAC-SHA1) when the BMC refuses 17's algorithms.
    fn ipmitool(&self, args: &[&str]) -> Res<String> {
        self.check_password_file()?;
        match self.ipmitool_with("17", args) {
            Err(Fail(Outcome::Failed, m))
                if m.contains("invalid authentication algorithm")
                    || m.contains("invalid integrity algorithm")
                    || m.contains("invalid confidentiality algorithm") =>
            {
                self.ipmitool_with("3", args)
            }
            r => r,
        }
    }

    fn ipmitool_with(&self, cipher: &str, args: &[&str]) -> Res<String> {
        let left = self.left()?;
        let (host, port) = host_port(self.addr);
        // Per-try timeout and retries such that ipmitool gives up on a silent BMC before the
        // node's time limit kills it: the answer then says unreachable, not timed out.
        let per_try = (left.as_secs() / 15).clamp(1, 3).to_string();
        let mut c = Command::new("ipmitool");
        c.args(["-v", "-I", "lanplus", "-C", cipher, "-H", host]);
        if let Some(p) = port {
            c.args(["-p", p]);
        }
        c.args(["-U", self.user, "-f"])
            .arg(self.password_file)
            .args(["-N", &per_try, "-R", "2"])
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (ok, stdout, stderr) = self.wait(c, left)?;
        if ok {
            return Ok(stdout);
        }
        let said: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !IPMITOOL_NOISE.iter().any(|n| l.contains(n)))
            .collect();
        let has = |s: &str| said.iter().any(|l| l.contains(s));
        Err(
            if has("RAKP 2 HMAC is invalid")
                || has("unauthorized name")
                || has("invalid user name")
                || has("Unauthorized name")
                || has("insufficient resources for session")
            {
                self.refused()
            } else if has("invalid authentication algorithm")
                || has("invalid integrity algorithm")
                || has("invalid confidentiality algorithm")
            {
                Fail(
                    Outcome::Failed,
                    format!("the BMC refused cipher suite {cipher}: {}", said.join("; ")),
                )
            } else if has("Get Auth Capabilities error")
                || has("No response from remote controller")
                || has("Unable to establish")
            {
                self.unreachable(said.last().unwrap_or(&"no response"))
            } else {
                Fail(
                    Outcome::Failed,
                    format!("ipmitool failed: {}", said.join("; ")),
                )
            },
        )
    }

    /// Runs `c` to its end or until `left` is over (then kills it); (success, stdout, stderr).
    fn wait(&self, mut c: Command, left: Duration) -> Res<(bool, String, String)> {
        let mut child = c.spawn().map_err(|e| {
            Fail(
                Outcome::Failed,
                if e.kind() == std::io::ErrorKind::NotFound {
                    "ipmitool is not installed: it talks IPMI to the BMC (Debian: apt install ipmitool)".to_string()
                } else {
                    format!("cannot run ipmitool: {e}")
                },
            )
        })?;
        // Both pipes are drained while it runs, so a chatty ipmitool never blocks on them.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut s);
                }
                s
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let end = Instant::now() + left;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.timed_out());
                }
            }
        };
        let text = |h: std::thread::JoinHandle<String>| h.join().unwrap_or_default();
        Ok((status.success(), text(out), text(err)))
    }
}

// ---- Redfish ----

/// A Redfish session's parts: the agent, the service root and the system's path.
struct Redfish<'a> {
    bmc: &'a Bmc<'a>,
    agent: ureq::Agent,
    /// `https://HOST[:PORT]`, no trailing slash.
    root: String,
    /// `Basic ...`.
    auth: String,
    /// `/redfish/v1/Systems/ID`.
    system: String,
}

impl<'a> Bmc<'a> {
    fn redfish(&'a self) -> Res<Redfish<'a>> {
        let (root, path) = match self.addr.split_once("://") {
            Some((scheme, rest)) => {
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                (format!("{scheme}://{host}"), format!("/{path}"))
            }
            None => (format!("https://{}", self.addr), String::new()),
        };
        let password =
            std::fs::read_to_string(self.password_file).map_err(|e| self.unreadable(e))?;
        let password = password.lines().next().unwrap_or("");
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", self.user))
        );
        let mut r = Redfish {
            bmc: self,
            agent: self.agent()?,
            root,
            auth,
            system: String::new(),
        };
        r.system = if path.trim_end_matches('/').contains("/Systems/") {
            path.trim_end_matches('/').to_string()
        } else {
            r.only_system()?
        };
        Ok(r)
    }

    fn agent(&self) -> Res<ureq::Agent> {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(self.left()?))
            .http_status_as_error(false)
            .user_agent(concat!("aurum/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = self.ca_file {
            let tls = crate::tls::client_config(Some(std::path::Path::new(ca)))
                .map_err(|e| Fail(Outcome::Failed, format!("the BMC's CA: {e}")))?;
            config = config.tls_config(tls);
        }
        // The environment's proxies as curl takes them: a BMC's https:// goes through a
        // CONNECT tunnel of https_proxy unless no_proxy names it (BMC networks usually should).
        let proxies =
            crate::proxy::Proxies::from_env().map_err(|e| Fail(Outcome::Failed, e.to_string()))?;
        Ok(crate::proxy::agent(config, &proxies))
    }
}

impl Redfish<'_> {
    /// Sends a request; the JSON answer (`Null` for an empty body).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Res<serde_json::Value> {
        let url = format!("{}{path}", self.root);
        // No new request once the node's time is up (each may take what was left at start).
        self.bmc.left()?;
        let sent = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header("Authorization", &self.auth)
                .call(),
            (m, body) => {
                let body = body.unwrap_or_default().to_string();
                let req = match m {
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
                req.header("Authorization", &self.auth)
                    .header("Content-Type", "application/json")
                    .send(body.as_bytes())
            }
        };
        let mut resp = sent.map_err(|e| self.transport(&url, e))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match status {
            200..=299 => Ok(json),
            401 | 403 => Err(self.bmc.refused()),
            _ => Err(Fail(
                Outcome::Failed,
                format!("{method} {url}: HTTP {status}{}", redfish_message(&json)),
            )),
        }
    }

    fn transport(&self, url: &str, e: ureq::Error) -> Fail {
        // rustls' refusals of the BMC's certificate may come wrapped in an I/O error.
        let tls = matches!(e, ureq::Error::Tls(_) | ureq::Error::Rustls(_))
            || e.to_string().contains("certificate");
        match e {
            ureq::Error::Timeout(_) => self.bmc.timed_out(),
            e if tls => Fail(
                Outcome::Failed,
                format!(
                    "{url}: TLS: {e}: give the CA that signed the BMC's certificate with `aurum node set {} --bmc-ca-file PEM`",
                    self.bmc.node
                ),
            ),
            e => self.bmc.unreachable(&e.to_string()),
        }
    }

    /// The path of the service's only system (several: the address must name one).
    fn only_system(&self) -> Res<String> {
        let systems = self.call("GET", "/redfish/v1/Systems", None)?;
        let members: Vec<&str> = systems["Members"]
            .as_array()
            .map(|m| m.iter().filter_map(|s| s["@odata.id"].as_str()).collect())
            .unwrap_or_default();
        match members.as_slice() {
            [one] => Ok(one.trim_end_matches('/').to_string()),
            [] => Err(Fail(
                Outcome::Failed,
                format!("{}/redfish/v1/Systems lists no system", self.root),
            )),
            many => Err(Fail(
                Outcome::Failed,
                format!(
                    "the BMC has {} systems ({}): name the node's in its address, `aurum node set {} --bmc {}{}`",
                    many.len(),
                    many.join(", "),
                    self.bmc.node,
                    self.root,
                    many[0]
                ),
            )),
        }
    }

    fn is_on(&self) -> Res<bool> {
        let sys = self.call("GET", &self.system, None)?;
        match sys["PowerState"].as_str() {
            Some("On") | Some("PoweringOff") => Ok(true),
            Some("Off") | Some("PoweringOn") => Ok(false),
            other => Err(Fail(
                Outcome::Failed,
                format!("{}{}: PowerState is {other:?}", self.root, self.system),
            )),
        }
    }

    fn reset(&self, op: Op) -> Res<()> {
        let sys = self.call("GET", &self.system, None)?;
        let action = &sys["Actions"]["#ComputerSystem.Reset"];
        let target = action["target"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}/Actions/ComputerSystem.Reset", self.system));
        // A BMC that lists the reset types it takes, without PowerCycle, gets ForceOff then
        // On: the same cycle in two requests.
        let allowed: Option<Vec<&str>> = action["ResetType@Redfish.AllowableValues"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect());
        let cycle_by_hand =
            matches!(op, Op::Cycle) && allowed.is_some_and(|a| !a.contains(&"PowerCycle"));
        let types: &[Op] = if cycle_by_hand {
            &[Op::Off, Op::On]
        } else {
            &[op]
        };
        for t in types {
            let body = serde_json::json!({ "ResetType": t.redfish() });
            self.call("POST", &target, Some(body))?;
        }
        Ok(())
    }

    fn bootdev(&self, target: BootTarget, persistent: bool, uefi: bool) -> Res<()> {
        let mut boot = serde_json::json!({
            "BootSourceOverrideTarget": match target {
                BootTarget::Pxe => "Pxe",
                BootTarget::Disk => "Hdd",
            },
            "BootSourceOverrideEnabled": if persistent { "Continuous" } else { "Once" },
        });
        if uefi {
            boot["BootSourceOverrideMode"] = "UEFI".into();
        }
        self.call(
            "PATCH",
            &self.system,
            Some(serde_json::json!({ "Boot": boot })),
        )
        .map(drop)
    }
}

/// `: MESSAGE` from a Redfish error body, or nothing.
fn redfish_message(json: &serde_json::Value) -> String {
    let e = &json["error"];
    let extended = e["@Message.ExtendedInfo"][0]["Message"].as_str();
    match extended.or(e["message"].as_str()) {
        Some(m) => format!(": {m}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(host_port("10.0.0.5"), ("10.0.0.5", None));
        assert_eq!(host_port("bmc-n01:6230"), ("bmc-n01", Some("6230")));
        assert_eq!(host_port("[fd00::5]:623"), ("fd00::5", Some("623")));
        assert_eq!(host_port("[fd00::5]"), ("fd00::5", None));
        assert_eq!(host_port("fd00::5"), ("fd00::5", None));
    }

    #[test]
    fn a_node_without_bmc_says_how_to_give_it_one() {
        let n = NodeEntry::new("n07", "52:54:00:00:00:07").unwrap();
        let r = apply(&n, Action::Status, Duration::from_secs(5));
        assert_eq!(r.status, Outcome::NoBmc);
        assert!(
            r.message.contains("aurum node set n07 --bmc ADDR"),
            "{}",
            r.message
        );
    }

    #[test]
    fn redfish_errors_give_their_message() {
        let j = serde_json::json!({"error": {"code": "Base.1.0.GeneralError", "message": "bad",
            "@Message.ExtendedInfo": [{"Message": "The ResetType is not supported."}]}});
        assert_eq!(redfish_message(&j), ": The ResetType is not supported.");
        assert_eq!(redfish_message(&serde_json::Value::Null), "");
    }
}
