//! Where webhook requests may go: `http` and `https` URLs whose host is a public
//! address. A URL naming (or resolving to) a loopback, private, link-local, carrier-grade
//! NAT, multicast, unspecified or otherwise reserved address is refused when it is
//! registered, and again when connecting, since DNS may answer differently by then.
//! `webhooks.allow_private_targets` lifts the address rules (for receivers on the same
//! machine or network).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// What the address rules are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Private, loopback and the other non-public addresses are allowed.
    pub allow_private: bool,
    /// Only `https` URLs.
    pub require_https: bool,
}

/// Why an address is not one to send to, if it is not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if a == 0 {
        Some("an unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a carrier-grade NAT address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() || a >= 240 {
        Some("a reserved address")
    } else if a == 192 && b == 0 && c == 0 {
        Some("an IETF protocol address")
    } else if a == 198 && (18..20).contains(&b) {
        Some("a benchmarking address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    // Addresses that carry an IPv4 address are judged by it: mapped (::ffff:a.b.c.d),
    // compatible (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:ab:cd::).
    let octets = ip.octets();
    let embedded =
        |at: usize| Ipv4Addr::new(octets[at], octets[at + 1], octets[at + 2], octets[at + 3]);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if segments[..6] == [0; 6] {
        return forbidden_v4(embedded(12)).or(Some("an IPv4-compatible address"));
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded(12));
    }
    if segments[0] == 0x2002 {
        return forbidden_v4(embedded(2));
    }
    match segments[0] {
        s if s & 0xfe00 == 0xfc00 => Some("a unique local (private) address"),
        s if s & 0xffc0 == 0xfe80 => Some("a link-local address"),
        s if s & 0xffc0 == 0xfec0 => Some("a site-local address"),
        s if s & 0xff00 == 0xff00 => Some("a multicast address"),
        _ => None,
    }
}

/// A URL that may be registered, or why not (to show under `url`).
pub fn check_url(text: &str, policy: TargetPolicy) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("is not a URL: {err}"))?;
    match url.scheme() {
        "https" => {}
        "http" if !policy.require_https => {}
        "http" => return Err("must be https (webhooks.require_https)".into()),
        other => return Err(format!("must be an http or https URL, not {other}:")),
    }
    match url.host() {
        None => return Err("has no host".into()),
        Some(Host::Domain("")) => return Err("has no host".into()),
        Some(host) if !policy.allow_private => {
            let ip = match host {
                Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
                Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
                Host::Domain(_) => None,
            };
            if let Some(reason) = ip.and_then(forbidden) {
                return Err(format!("names {reason}, where webhooks may not go"));
            }
        }
        Some(_) => {}
    }
    Ok(url)
}

/// Resolves the host of a checked URL, refusing it when it resolves to a forbidden
/// address (or to nothing).
pub async fn check_resolved(url: &Url, policy: TargetPolicy) -> Result<(), String> {
    let Some(Host::Domain(domain)) = url.host() else {
        return Ok(());
    };
    if policy.allow_private {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((domain, port))
        .await
        .map_err(|err| format!("has a host that does not resolve: {err}"))?
        .collect();
    if addrs.is_empty() {
        return Err("has a host that resolves to no address".into());
    }
    for addr in addrs {
        if let Some(reason) = forbidden(addr.ip()) {
            return Err(format!(
                "has a host that resolves to {reason} ({}), where webhooks may not go",
                addr.ip()
            ));
        }
    }
    Ok(())
}

/// A DNS resolver for the webhook client that drops forbidden addresses, so a host
/// that resolved to a public address at registration cannot be turned to a private
/// one later. (IP literals never reach a resolver; the sender checks them itself.)
#[derive(Debug, Default)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let public: Vec<SocketAddr> =
                resolved.filter(|a| forbidden(a.ip()).is_none()).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

impl PublicOnly {
    pub fn shared() -> Arc<PublicOnly> {
        Arc::new(PublicOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy {
        allow_private: false,
        require_https: false,
    };

    #[test]
    fn every_kind_of_non_public_address_is_refused() {
        for address in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert!(forbidden(ip).is_some(), "{address} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for address in [
            "93.184.215.14",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(forbidden(ip), None, "{address} should be allowed");
        }
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_taken() {
        assert!(check_url("https://hooks.example.com/mailroom", STRICT).is_ok());
        assert!(check_url("http://hooks.example.com:8080/x?y=1", STRICT).is_ok());
        for (url, expected) in [
            ("ftp://hooks.example.com/", "http or https"),
            ("file:///etc/passwd", "http or https"),
            ("gopher://hooks.example.com/", "http or https"),
            ("not a url", "is not a URL"),
            ("https://127.0.0.1/hook", "loopback"),
            ("http://[::1]:8080/hook", "loopback"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[::ffff:a9fe:a9fe]/", "link-local"),
            ("http://0x7f000001/", "loopback"),
            ("http://2130706433/", "loopback"),
            ("http://10.1.1.1/", "private"),
        ] {
            let err = check_url(url, STRICT).unwrap_err();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn the_policy_can_allow_private_targets_and_require_https() {
        let open = TargetPolicy {
            allow_private: true,
            require_https: false,
        };
        assert!(check_url("http://127.0.0.1:9000/hook", open).is_ok());
        let https = TargetPolicy {
            allow_private: true,
            require_https: true,
        };
        assert!(
            check_url("http://hooks.example.com/", https)
                .unwrap_err()
                .contains("https")
        );
        assert!(check_url("https://hooks.example.com/", https).is_ok());
    }

    #[tokio::test]
    async fn a_host_resolving_to_a_loopback_address_is_refused() {
        let url = check_url("http://localhost:9000/hook", STRICT).unwrap();
        let err = check_resolved(&url, STRICT).await.unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        let resolved = PublicOnly.resolve("localhost".parse().unwrap()).await;
        assert!(resolved.is_err(), "the client's resolver drops it too");
    }
}
