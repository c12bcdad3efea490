//! Where a webhook may be sent. A tenant names the URL, so without a check it could make
//! the engine call what only the engine can reach (a metadata service, an admin port on
//! localhost, the intranet). A destination must resolve only to public addresses unless
//! its host is in `[webhooks] allow`; the check runs at create and again before every
//! call, and the call connects only to the addresses it checked (no DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// Why a destination is refused; the message is the one the tenant sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A webhook URL, well-formed and of a scheme faena sends to (`https`, checked against
/// the system's CA store, or `http`).
pub fn parse(url: &str) -> Result<Url, Refused> {
    let parsed = Url::parse(url).map_err(|e| Refused(format!("not a valid URL ({e})")))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(Refused(format!(
                "scheme `{other}` is not `https` or `http`"
            )));
        }
    }
    if parsed.host().is_none() {
        return Err(Refused("the URL has no host".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refused(
            "credentials in the URL are not taken: the signature tells the receiver the \
             call is faena's"
                .into(),
        ));
    }
    if parsed.fragment().is_some() {
        return Err(Refused("the URL has a fragment (`#…`)".into()));
    }
    Ok(parsed)
}

/// Whether `url`'s host, or host and port, is in the allowlist.
pub fn allowed(url: &Url, allow: &[String]) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let with_port = format!("{host}:{port}");
    allow
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(&with_port))
}

/// The addresses `url` may be called at: its host resolved, each address public (or
/// the host allowed). Every address must pass: a name that resolves to a public and a
/// private address is refused, not half-used.
pub async fn resolve(url: &Url, allow: &[String]) -> Result<Vec<SocketAddr>, Refused> {
    let port = url.port_or_known_default().unwrap_or(80);
    let host = url.host_str().unwrap_or_default();
    // IPv6 literals come in brackets; names go to the resolver.
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Refused(format!("host `{host}` does not resolve ({e})")))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Refused(format!(
            "host `{}` resolves to no address",
            url.host_str().unwrap_or_default()
        )));
    }
    if !allowed(url, allow) {
        for a in &addrs {
            if let Some(kind) = internal(a.ip()) {
                // The address itself is logged, not told: a tenant must not map the
                // engine's internal network through these answers.
                tracing::info!(host = url.host_str().unwrap_or_default(), ip = %a.ip(), kind, "webhook destination refused");
                return Err(Refused(format!(
                    "`{}` resolves to a {kind} address; webhooks go to public addresses \
                     unless the host is in the engine's `[webhooks] allow`",
                    url.host_str().unwrap_or_default(),
                )));
            }
        }
    }
    Ok(addrs)
}

/// What kind of non-public address `ip` is, or `None` for a public one.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, _, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (CGNAT)")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if a >= 240 {
        Some("reserved")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("protocol-assignment")
    } else {
        None
    }
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    // An IPv4 address written as IPv6 reaches that IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    // NAT64 (64:ff9b::/96) translates to the IPv4 address in its low bits.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = seg;
        return internal_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    let low_v4 = || Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32);
    // IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks).
    if seg[..6] == [0, 0, 0, 0, 0, 0] {
        return internal_v4(low_v4()).or(Some("IPv4-compatible"));
    }
    if ip.is_multicast() {
        Some("multicast")
    } else if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        // Local-use NAT64 (64:ff9b:1::/48): translated inside the network.
        Some("local NAT64")
    } else if seg[0] == 0x2002 {
        // 6to4 carries an IPv4 address in bits 16-47.
        internal_v4(Ipv4Addr::from(((seg[1] as u32) << 16) | seg[2] as u32)).or(Some("6to4"))
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        Some("Teredo")
    } else if seg[0] == 0x2001 && seg[1] & 0xfff0 == 0x0010 {
        Some("ORCHID")
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        Some("documentation")
    } else if seg[0] == 0x0100 && seg[1..4] == [0, 0, 0] {
        Some("discard-only")
    } else if seg[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if seg[0] & 0xfe00 == 0xfc00 {
        Some("unique-local")
    } else if seg[0] & 0xffc0 == 0xfec0 {
        Some("site-local")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_named() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::7f00:1", "loopback"),
            ("::127.0.0.1", "loopback"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("64:ff9b:1::1", "local NAT64"),
            ("2002:0a00:0001::1", "private"),
            ("2002:5db8:d822::1", "6to4"),
            ("2001:0:4136:e378::1", "Teredo"),
            ("2001:db8::1", "documentation"),
        ] {
            assert_eq!(internal(ip.parse().unwrap()), Some(kind), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
        ] {
            assert_eq!(internal(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_before_any_lookup() {
        assert!(parse("http://example.com/hook").is_ok());
        assert!(parse("https://example.com/hook").is_ok());
        for (url, why) in [
            ("ftp://example.com/", "scheme"),
            ("http://user:pw@example.com/", "credentials"),
            ("not a url", "valid URL"),
            ("http://example.com/#x", "fragment"),
        ] {
            let e = parse(url).unwrap_err().0;
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn internal_destinations_need_the_allowlist() {
        let url = parse("http://127.0.0.1:9000/h").unwrap();
        let e = resolve(&url, &[]).await.unwrap_err().0;
        assert!(e.contains("loopback") && e.contains("allow"), "{e}");
        for allow in ["127.0.0.1", "127.0.0.1:9000"] {
            let addrs = resolve(&url, &[allow.into()]).await.unwrap();
            assert_eq!(addrs, ["127.0.0.1:9000".parse().unwrap()]);
        }
        assert!(resolve(&url, &["127.0.0.1:9001".into()]).await.is_err());
        let url = parse("http://localhost:1/").unwrap();
        assert!(resolve(&url, &[]).await.unwrap_err().0.contains("loopback"));
        let url = parse("http://10.0.0.1/").unwrap();
        assert!(resolve(&url, &[]).await.unwrap_err().0.contains("private"));
    }
}
