//! HTTP proxies, taken as curl takes them.
//!
//! A site's forward proxy (Squid, a Dragonfly or Kraken peer agent) caches what goes through
//! it only when it sees the request: `GET http://master:8035/packs/ab/ab….pack HTTP/1.1` (the
//! absolute form of RFC 9112, 3.2.2). ureq 3 tunnels every proxied request with `CONNECT`, even
//! for `http://` URLs, which a default Squid refuses (403) and no cache can look into; so aurum
//! makes its own connections to a proxy: for an `http://` URL it connects to the proxy and
//! writes each request's target in absolute form (with `Proxy-Authorization` when the proxy
//! URL has credentials); for an `https://` URL (a BMC) it opens a `CONNECT` tunnel and TLS
//! goes through it, as curl does.
//!
//! Which proxy, as curl chooses it: `--proxy URL` (node.toml's `proxy` after the environment),
//! else `http_proxy` for `http://` URLs (lower case only: an `HTTP_PROXY` may come from a CGI
//! request's `Proxy:` header) and `https_proxy` or `HTTPS_PROXY` for `https://`, else
//! `all_proxy` or `ALL_PROXY`. A proxy URL without a scheme is `http://`; without a port, port
//! 1080 (curl's default). `--proxy ""` uses no proxy at all.
//!
//! `no_proxy` (or `NO_PROXY`, or node.toml's `no-proxy`) lists hosts reached directly, with
//! curl's rules: entries separated by commas or spaces; `*` alone matches every host; a name
//! matches itself and every name under it (`example.com` matches `example.com` and
//! `www.example.com`, not `notexample.com`), a leading dot changes nothing (`.example.com`
//! matches `example.com` too), a trailing dot on either side is ignored, case is ignored, and
//! an entry without a port matches the host at every port; an IP address matches itself, and
//! with `/BITS` (CIDR) every address of its network (`10.0.0.0/8`, `fd00::/8`); IPv6 addresses
//! are written without brackets. Beyond curl, as Go's `net/http` and Python's `urllib` take
//! them: `HOST:PORT` (`[V6]:PORT` for an IPv6 address) matches that host at that port only
//! (the URL's port, or 80 for `http://` and 443 for `https://` when it names none; curl
//! compares host names alone, so such an entry never matches there), and `*.example.com` is
//! the domain `example.com`.

use std::net::IpAddr;
use std::sync::Arc;

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, RustlsConnector, TcpConnector,
    Transport, TransportAdapter,
};

use crate::error::{invalid, Result};

/// curl's port for a proxy URL that names none.
const DEFAULT_PORT: u16 = 1080;

/// A proxy server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    /// `Basic` credentials, encoded, when the URL had `USER:PASSWORD@`.
    auth: Option<String>,
}

impl ProxyUrl {
    /// `http://[USER[:PASSWORD]@]HOST[:PORT][/]`, the scheme optional.
    pub fn parse(url: &str) -> Result<ProxyUrl> {
        let bad = |why: &str| {
            invalid(format!(
                "proxy `{url}`: {why}; give it as http://HOST:PORT (e.g. http://squid:3128)"
            ))
        };
        let rest = match url.split_once("://") {
            None => url,
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "aurum speaks to HTTP proxies only, not `{scheme}://` ones"
                )))
            }
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("a proxy URL has no path"));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None | Some("") => DEFAULT_PORT,
            Some(p) => p
                .parse()
                .map_err(|_| bad(&format!("`{p}` is not a port")))?,
        };
        let auth = userinfo.map(|u| {
            use base64::Engine;
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let creds = format!("{}:{}", percent_decode(user), percent_decode(pass));
            base64::engine::general_purpose::STANDARD.encode(creds)
        });
        Ok(ProxyUrl {
            host: host.to_string(),
            port,
            auth,
        })
    }

    /// `host:port` (brackets around an IPv6 address), for URIs and messages.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for ProxyUrl {
    /// `http://HOST:PORT`, never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One entry of a no_proxy list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// `*`
    All,
    /// A name, lower case, without leading or trailing dots; with a port, only that port.
    Name(String, Option<u16>),
    /// An address and the bits of it that count; with a port, only that port.
    Net(IpAddr, u8, Option<u16>),
}

/// The hosts reached without a proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoProxy(Vec<Entry>);

/// `HOST:PORT` or `[V6]:PORT` split; a bare IPv6 address (colons, no brackets) or a name
/// has no port. `None` when what follows the last colon is not a port.
fn split_port(e: &str) -> Option<(&str, Option<u16>)> {
    if let Some(v6) = e.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match e.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => Some((host, Some(p.parse().ok()?))),
        _ => Some((e, None)),
    }
}

impl NoProxy {
    /// A no_proxy list: entries separated by commas or white space. An entry that cannot
    /// match anything (`host:notaport`) is left out, as curl leaves it unmatched.
    pub fn parse(list: &str) -> NoProxy {
        let mut entries = Vec::new();
        for e in list.split(|c: char| c == ',' || c.is_whitespace()) {
            let e = e.trim();
            if e.is_empty() {
                continue;
            }
            if e == "*" {
                entries.push(Entry::All);
                continue;
            }
            let (e, bits) = match e.split_once('/') {
                Some((a, b)) => match b.parse::<u8>() {
                    Ok(b) => (a, Some(b)),
                    Err(_) => continue,
                },
                None => (e, None),
            };
            let Some((host, port)) = split_port(e) else {
                continue;
            };
            if let Ok(ip) = host.parse::<IpAddr>() {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                entries.push(Entry::Net(ip, bits.unwrap_or(max).min(max), port));
                continue;
            }
            // `*.example.com`, which curl would never match, is written often enough (Go's
            // and wget's tools take it) to be read as the domain `example.com`.
            let name = host.strip_prefix("*.").unwrap_or(host);
            let name = name.trim_start_matches('.').trim_end_matches('.');
            if !name.is_empty() {
                entries.push(Entry::Name(name.to_ascii_lowercase(), port));
            }
        }
        NoProxy(entries)
    }

    /// Whether `host` (a URL's host, a name or an address, brackets allowed) at `port` (the
    /// URL's, or its scheme's default) is reached directly.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        self.0.iter().any(|e| match (e, ip) {
            (Entry::All, _) => true,
            (Entry::Net(net, bits, p), Some(ip)) => port_ok(p) && in_network(ip, *net, *bits),
            (Entry::Net(..), None) => false,
            (Entry::Name(name, p), Some(_)) => port_ok(p) && *name == host,
            (Entry::Name(name, p), None) => {
                port_ok(p)
                    && (host == *name
                        || (host.len() > name.len()
                            && host.ends_with(name.as_str())
                            && host.as_bytes()[host.len() - name.len() - 1] == b'.'))
            }
        })
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    (a >> shift) == (b >> shift)
}

/// The proxies a program's HTTP requests go through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proxies {
    http: Option<ProxyUrl>,
    https: Option<ProxyUrl>,
    no_proxy: NoProxy,
}

fn env(names: &[&str]) -> Option<(String, String)> {
    names
        .iter()
        .find_map(|n| crate::config::env_var(n).map(|v| (n.to_string(), v)))
}

impl Proxies {
    /// No proxy at all.
    pub fn none() -> Proxies {
        Proxies::default()
    }

    /// The environment's proxies, as curl reads them.
    pub fn from_env() -> Result<Proxies> {
        Proxies::choose(None, None, None)
    }

    /// `flag` (`--proxy URL`; empty: no proxy) for every URL, else the environment's
    /// `http_proxy`, `https_proxy`, `all_proxy`, else `file` (node.toml's `proxy`) for every
    /// URL. `no_proxy`, else `file_no_proxy`, names the hosts reached directly.
    pub fn choose(
        flag: Option<&str>,
        file: Option<&str>,
        file_no_proxy: Option<&str>,
    ) -> Result<Proxies> {
        let parse = |origin: &str, url: &str| {
            ProxyUrl::parse(url).map_err(|e| invalid(format!("{origin}: {e}")))
        };
        let no_proxy = match env(&["no_proxy", "NO_PROXY"]) {
            Some((_, v)) => NoProxy::parse(&v),
            None => NoProxy::parse(file_no_proxy.unwrap_or("")),
        };
        if let Some(url) = flag {
            let p = match url.trim() {
                "" => None,
                u => Some(parse("--proxy", u)?),
            };
            return Ok(Proxies {
                http: p.clone(),
                https: p,
                no_proxy,
            });
        }
        let all = env(&["all_proxy", "ALL_PROXY"]);
        let http = env(&["http_proxy"]).or_else(|| all.clone());
        let https = env(&["https_proxy", "HTTPS_PROXY"]).or(all);
        if http.is_some() || https.is_some() {
            let one = |v: Option<(String, String)>| -> Result<Option<ProxyUrl>> {
                v.map(|(n, u)| parse(&format!("environment {n}"), &u))
                    .transpose()
            };
            return Ok(Proxies {
                http: one(http)?,
                https: one(https)?,
                no_proxy,
            });
        }
        let p = match file.map(str::trim) {
            None | Some("") => None,
            Some(u) => Some(parse("node.toml's proxy", u)?),
        };
        Ok(Proxies {
            http: p.clone(),
            https: p,
            no_proxy,
        })
    }

    /// The proxy a request to `uri` goes through, none when it goes direct.
    pub fn for_uri(&self, uri: &Uri) -> Option<&ProxyUrl> {
        let https = uri.scheme_str() == Some("https");
        let p = if https { &self.https } else { &self.http };
        let p = p.as_ref()?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        match uri.host() {
            Some(h) if !self.no_proxy.matches(h, port) => Some(p),
            _ => None,
        }
    }

    /// The proxy a request to `url` goes through, for messages.
    pub fn for_url(&self, url: &str) -> Option<&ProxyUrl> {
        self.for_uri(&url.parse().ok()?)
    }
}

/// An agent built from `config` whose requests go through `proxies`: plain requests in
/// absolute form for `http://` URLs, a `CONNECT` tunnel for `https://` ones.
pub fn agent(
    config: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
    proxies: &Proxies,
) -> ureq::Agent {
    // ureq's own proxy (read from the environment by default) would tunnel everything.
    let config = config.proxy(None).build();
    let proxies = Arc::new(proxies.clone());
    let connector =
        ().chain(TcpConnector::default())
            .chain(ProxyConnector(proxies.clone()))
            .chain(RustlsConnector::default());
    ureq::Agent::with_parts(config, connector, ProxyResolver(proxies))
}

/// Resolves the proxy's name instead of the target's for a proxied request: the TCP
/// connection goes to the proxy, and the node may not be able to resolve the target at all.
#[derive(Debug)]
struct ProxyResolver(Arc<Proxies>);

impl Resolver for ProxyResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> std::result::Result<ResolvedSocketAddrs, ureq::Error> {
        let inner = DefaultResolver::default();
        match self.0.for_uri(uri) {
            Some(p) => {
                let proxy: Uri = format!("http://{}/", p.authority())
                    .parse()
                    .map_err(|_| ureq::Error::BadUri(p.to_string()))?;
                inner.resolve(&proxy, config, timeout)
            }
            None => inner.resolve(uri, config, timeout),
        }
    }
}

/// Turns a connection to the proxy into one that carries requests to the target.
#[derive(Debug)]
struct ProxyConnector(Arc<Proxies>);

impl<In: Transport> Connector<In> for ProxyConnector {
    type Out = Either<In, AbsoluteForm<In>>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> std::result::Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        let Some(proxy) = self.0.for_uri(details.uri) else {
            return Ok(Some(Either::A(transport)));
        };
        let host = details.uri.host().unwrap_or_default();
        let https = details.needs_tls();
        let port = details
            .uri
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if https {
            return connect_tunnel(transport, details, proxy, &authority)
                .map(|t| Some(Either::A(t)));
        }
        // The target as the proxy wants it: scheme and authority before the path. The
        // default port is left out, as a browser does, so that the cache key is the URL's.
        let origin = match details.uri.port_u16() {
            Some(p) if p != 80 => format!("http://{authority}"),
            _ => format!("http://{host}"),
        };
        Ok(Some(Either::B(AbsoluteForm {
            inner: transport,
            origin,
            auth: proxy.auth.clone(),
            at_head: true,
        })))
    }
}

/// Opens a `CONNECT` tunnel to `authority` through the proxy `transport` is connected to.
fn connect_tunnel<In: Transport>(
    transport: In,
    details: &ConnectionDetails,
    proxy: &ProxyUrl,
    authority: &str,
) -> std::result::Result<In, ureq::Error> {
    use std::io::Write;
    let mut w = TransportAdapter::new(transport, details.current_time.clone());
    w.set_timeout(details.timeout);
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(a) = &proxy.auth {
        head.push_str(&format!("Proxy-Authorization: Basic {a}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.flush()?;
    let mut transport = w.into_inner();
    loop {
        let progress = transport.maybe_await_input(details.timeout)?;
        let buffers = transport.buffers();
        let input = buffers.input();
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(input) {
            Ok(httparse::Status::Complete(used)) => {
                let code = resp.code.unwrap_or(0);
                buffers.input_consume(used);
                if code != 200 {
                    return Err(ureq::Error::ConnectProxyFailed(format!(
                        "the proxy {proxy} answered CONNECT {authority} with HTTP {code}"
                    )));
                }
                return Ok(transport);
            }
            Ok(httparse::Status::Partial) if progress => {
                buffers.input_consume(0);
            }
            Ok(httparse::Status::Partial) => {
                return Err(ureq::Error::ConnectProxyFailed(format!(
                    "the proxy {proxy} closed the connection during CONNECT {authority}"
                )))
            }
            Err(e) => {
                return Err(ureq::Error::ConnectProxyFailed(format!(
                    "the proxy {proxy} answered CONNECT {authority} with no HTTP ({e})"
                )))
            }
        }
    }
}

/// A connection to a proxy whose requests are written with the absolute-form target
/// (`GET http://host:port/path HTTP/1.1`). ureq writes each request's head first, in the
/// first transmission after the previous answer was read (HTTP/1.1 without pipelining): that
/// transmission's first line is rewritten.
#[derive(Debug)]
pub struct AbsoluteForm<In> {
    inner: In,
    /// `http://host[:port]`
    origin: String,
    auth: Option<String>,
    /// The next transmission starts a request.
    at_head: bool,
}

impl<In: Transport> Transport for AbsoluteForm<In> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(
        &mut self,
        amount: usize,
        timeout: NextTimeout,
    ) -> std::result::Result<(), ureq::Error> {
        if !std::mem::replace(&mut self.at_head, false) {
            return self.inner.transmit_output(amount, timeout);
        }
        let sent = self.inner.buffers().output()[..amount].to_vec();
        let Some(rewritten) = absolute_form(&sent, &self.origin, self.auth.as_deref()) else {
            return self.inner.transmit_output(amount, timeout);
        };
        let room = self.inner.buffers().output().len().max(1);
        for chunk in rewritten.chunks(room) {
            self.inner.buffers().output()[..chunk.len()].copy_from_slice(chunk);
            self.inner.transmit_output(chunk.len(), timeout)?;
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> std::result::Result<bool, ureq::Error> {
        // An answer is being read: what is sent next is a new request.
        self.at_head = true;
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }
}

/// `METHOD /path VERSION` at the start of `head` with the origin put before the path, and
/// the proxy's credentials after the line; none when `head` does not start with a request
/// line in origin form.
fn absolute_form(head: &[u8], origin: &str, auth: Option<&str>) -> Option<Vec<u8>> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let (method, rest) = line.split_once(' ')?;
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !rest.starts_with('/')
    {
        return None;
    }
    let mut out = Vec::with_capacity(head.len() + origin.len() + 64);
    out.extend_from_slice(format!("{method} {origin}{rest}\r\n").as_bytes());
    if let Some(a) = auth {
        out.extend_from_slice(format!("Proxy-Authorization: Basic {a}\r\n").as_bytes());
    }
    out.extend_from_slice(&head[line_end + 2..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Proxies {
        fn with_no_proxy(mut self, other: &Proxies) -> Proxies {
            self.no_proxy = other.no_proxy.clone();
            self
        }
    }

    #[test]
    fn no_proxy_follows_curl() {
        let n = NoProxy::parse("example.com, .local.test,10.0.0.0/8 ::1 192.168.1.5,FOO.org.");
        for host in [
            "example.com",
            "www.example.com",
            "a.b.example.com",
            "EXAMPLE.COM.",
            "local.test",
            "x.local.test",
            "10.1.2.3",
            "[::1]",
            "::1",
            "192.168.1.5",
            "foo.org",
            "sub.foo.org",
        ] {
            assert!(n.matches(host, 80), "{host} should go direct");
        }
        for host in [
            "notexample.com",
            "example.com.org",
            "11.0.0.1",
            "192.168.1.6",
            "::2",
            "test",
            "local.test.evil",
        ] {
            assert!(!n.matches(host, 80), "{host} should go through the proxy");
        }
        assert!(NoProxy::parse("*").matches("anything", 80));
        assert!(!NoProxy::parse("").matches("anything", 80));
        assert!(NoProxy::parse("fd00::/8").matches("fd12::1", 80));
        assert!(!NoProxy::parse("fd00::/8").matches("fe80::1", 80));
        // A name without a port matches every port (curl: `local.com` matches `local.com:80`).
        assert!(n.matches("example.com", 8035));
    }

    #[test]
    fn no_proxy_entries_with_a_port_match_that_port_only() {
        let n = NoProxy::parse(
            "master:8035, .rack.test:3128,10.2.3.4:8035,192.168.1.5:80,[fd00::1]:8035,*.lab.test",
        );
        for (host, port) in [
            ("master", 8035),
            ("MASTER.", 8035),
            ("cache.rack.test", 3128),
            ("rack.test", 3128),
            ("10.2.3.4", 8035),
            ("192.168.1.5", 80),
            ("[fd00::1]", 8035),
            ("fd00::1", 8035),
            ("lab.test", 1),
            ("n01.lab.test", 8035),
        ] {
            assert!(n.matches(host, port), "{host}:{port} should go direct");
        }
        for (host, port) in [
            ("master", 80),
            ("master", 443),
            ("cache.rack.test", 80),
            ("10.2.3.4", 80),
            ("10.2.3.5", 8035),
            ("192.168.1.5", 8080),
            ("fd00::1", 80),
            ("notlab.test", 8035),
        ] {
            assert!(
                !n.matches(host, port),
                "{host}:{port} should go through the proxy"
            );
        }
        // An entry whose port is not a number matches nothing, the rest of the list stands.
        let n = NoProxy::parse("master:http,10.0.0.0/8:8035,cache");
        assert!(!n.matches("master", 80));
        assert!(!n.matches("10.1.1.1", 8035));
        assert!(n.matches("cache", 80));
        // The port a URL names, or its scheme's default.
        let p = Proxies {
            http: Some(ProxyUrl::parse("http://squid:3128").unwrap()),
            https: Some(ProxyUrl::parse("http://squid:3128").unwrap()),
            no_proxy: NoProxy::parse("master:8035,bmc:443,web:80"),
        };
        let via = |u: &str| p.for_url(u).is_some();
        assert!(!via("http://master:8035/FORMAT"));
        assert!(via("http://master/FORMAT"));
        assert!(!via("https://bmc/redfish/v1"));
        assert!(via("https://bmc:8443/redfish/v1"));
        assert!(!via("http://web/"));
        assert!(!via("http://web:80/"));
    }

    #[test]
    fn proxy_urls_parse_as_curl_reads_them() {
        let p = ProxyUrl::parse("squid:3128").unwrap();
        assert_eq!(p.to_string(), "http://squid:3128");
        let p = ProxyUrl::parse("http://proxy/").unwrap();
        assert_eq!(p.authority(), "proxy:1080");
        let p = ProxyUrl::parse("http://us%40r:p%3Ass@[fd00::1]:8080").unwrap();
        assert_eq!(p.authority(), "[fd00::1]:8080");
        use base64::Engine;
        let creds = base64::engine::general_purpose::STANDARD
            .decode(p.auth.unwrap())
            .unwrap();
        assert_eq!(creds, b"us@r:p:ss");
        assert!(ProxyUrl::parse("socks5://x:1080").is_err());
        assert!(ProxyUrl::parse("http://x:notaport").is_err());
        assert!(ProxyUrl::parse("http://x:3128/path").is_err());
    }

    #[test]
    fn the_request_line_gets_the_origin() {
        let head = b"GET /packs/list HTTP/1.1\r\nHost: m:8035\r\n\r\n";
        let out = absolute_form(head, "http://m:8035", Some("dTpw")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET http://m:8035/packs/list HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\nHost: m:8035\r\n\r\n"
        );
        assert!(absolute_form(b"{\"json\": 1}", "http://m", None).is_none());
    }

    #[test]
    fn the_flag_beats_the_environment_which_beats_the_file() {
        let p = Proxies::choose(Some(""), Some("http://file:1"), None).unwrap();
        assert_eq!(p, Proxies::none().with_no_proxy(&p));
        let p =
            Proxies::choose(Some("http://flag:2"), Some("http://file:1"), Some("direct")).unwrap();
        let uri: Uri = "http://server:8035/FORMAT".parse().unwrap();
        assert_eq!(p.for_uri(&uri).unwrap().to_string(), "http://flag:2");
        // node.toml's no-proxy applies when the environment has none.
        if crate::config::env_var("no_proxy").is_none()
            && crate::config::env_var("NO_PROXY").is_none()
        {
            let direct: Uri = "http://direct:8035/".parse().unwrap();
            assert!(p.for_uri(&direct).is_none());
        }
    }
}
