//! Where a URL in a text points: a cloud metadata service, or another internal address (loopback,
//! private, link-local, unique-local, unspecified), however its host is written. Candidates are
//! found with a loose pattern, then parsed as a browser parses them (the `url` crate's WHATWG host
//! parser reads decimal, octal, hex and shortened IPv4) and judged with `std::net`, never matched.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::Regex;

/// What an internal URL reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Loopback, private, link-local, unique-local or unspecified addresses and local names.
    Internal,
    /// A cloud instance metadata service: credentials for the asking.
    Metadata,
}

/// A scheme and `//` (or `\\`, which browsers read the same for web URLs), then the rest.
static URL_CANDIDATE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"(?i)\b[a-z][a-z0-9+.-]{1,15}:[/\\]{2}[^\s'"<>`]+"#).expect("url candidate pattern"));
/// No scheme: `//host/...`, or an IPv4 literal followed by a path (`169.254.169.254/latest`).
static BARE_CANDIDATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(?:^|[\s'"(=,])(//[^\s'"<>`/]+[^\s'"<>`]*|(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?/[^\s'"<>`]*)"#)
        .expect("bare candidate pattern")
});
/// A network prefix (`10.0.0.0/8`) names a range, not a place to fetch.
static CIDR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:\d{1,3}\.){3}\d{1,3}/\d{1,2}$").expect("cidr pattern"));
/// An IPv6 zone (`%25eth0`), which the URL standard does not accept but resolvers do.
static ZONE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"%(?:25)?[0-9A-Za-z._~-]+\]").expect("zone pattern"));

/// The internal targets of the URLs in `text`, in order.
pub fn targets(text: &str) -> impl Iterator<Item = Target> + '_ {
    // Both patterns need `//` (or `\\`) or a digit before a dot: most texts have neither.
    let slashes = text.contains("//") || text.contains('\\');
    let dotted = text.match_indices('.').any(|(at, _)| at > 0 && text.as_bytes()[at - 1].is_ascii_digit());
    let with_scheme = URL_CANDIDATE.find_iter(if slashes { text } else { "" }).filter_map(|m| url_target(m.as_str()));
    let bare = BARE_CANDIDATE
        .captures_iter(if slashes || dotted { text } else { "" })
        .filter_map(|c| c.get(1))
        .map(|m| m.as_str())
        .filter(|s| !CIDR.is_match(s))
        .filter_map(|s| url_target(&format!("http://{}", s.trim_start_matches('/'))));
    with_scheme.chain(bare)
}

/// Whether `url` points at a cloud metadata service, loopback, a private or link-local range, or an
/// unspecified address, however its host is written (decimal, octal, hex or shortened IPv4,
/// IPv4-mapped IPv6, a trailing dot).
pub fn ssrf_target(url: &str) -> bool {
    url_target(url).is_some()
}

/// What `url` reaches, if it is internal.
pub fn url_target(url: &str) -> Option<Target> {
    let parsed = parse(url).or_else(|| parse(&ZONE.replace(url, "]")))?;
    match parsed.host()? {
        url::Host::Ipv4(ip) => v4_target(ip),
        url::Host::Ipv6(ip) => v6_target(ip),
        url::Host::Domain(name) => name_target(name),
    }
}

fn parse(url: &str) -> Option<url::Url> {
    let parsed = url::Url::parse(url).ok()?;
    if parsed.is_special() {
        return Some(parsed);
    }
    // Other schemes (gopher, redis, ldap...) keep their host unparsed: read it as a web URL's.
    let rest = url.get(parsed.scheme().len() + 1..)?;
    url::Url::parse(&format!("http:{rest}")).ok()
}

fn name_target(name: &str) -> Option<Target> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let name = name.as_str();
    if matches!(name, "metadata" | "metadata.google.internal" | "metadata.azure.com" | "instance-data")
        || (name.starts_with("metadata.") && name.ends_with(".internal"))
    {
        return Some(Target::Metadata);
    }
    let local = matches!(name, "localhost" | "localhost.localdomain" | "ip6-localhost" | "ip6-loopback")
        || [".localhost", ".internal", ".localdomain"].iter().any(|s| name.ends_with(s))
        // Public names that resolve to loopback for everyone.
        || ["localtest.me", "lvh.me", "vcap.me"].iter().any(|d| name == *d || name.ends_with(&format!(".{d}")));
    if local {
        return Some(Target::Internal);
    }
    // Wildcard DNS that answers with the address written in the name: 10.0.0.1.nip.io, 10-0-0-1.sslip.io.
    let embedded = ["nip.io", "sslip.io", "xip.io"].iter().find_map(|d| name.strip_suffix(&format!(".{d}")))?;
    let last_four: Vec<&str> = embedded.rsplit(['.', '-']).take(4).collect();
    let ip: Ipv4Addr = last_four.iter().rev().copied().collect::<Vec<_>>().join(".").parse().ok()?;
    v4_target(ip)
}

fn v4_target(ip: Ipv4Addr) -> Option<Target> {
    let [a, b, ..] = ip.octets();
    let metadata =
        [[169, 254, 169, 254], [169, 254, 170, 2], [100, 100, 100, 200], [192, 0, 0, 192], [168, 63, 129, 16]];
    if metadata.contains(&ip.octets()) {
        return Some(Target::Metadata);
    }
    let internal = ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || a == 0
        // Carrier-grade NAT, where some clouds put services, and IETF protocol assignments.
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0);
    internal.then_some(Target::Internal)
}

fn v6_target(ip: Ipv6Addr) -> Option<Target> {
    let segments = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // IPv4-mapped and -compatible, NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_target(v4);
    }
    if segments[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return v4_target(embedded_v4(segments[6], segments[7]));
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_target(embedded_v4(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return v4_target(embedded_v4(segments[1], segments[2]));
    }
    // AWS's metadata service over IPv6.
    if segments == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] {
        return Some(Target::Metadata);
    }
    let internal = ip.is_loopback() || ip.is_unspecified() || ip.is_unique_local() || ip.is_unicast_link_local();
    internal.then_some(Target::Internal)
}

#[cfg(test)]
mod tests {
    use super::{Target, targets, url_target};

    #[test]
    fn however_the_host_is_written() {
        for url in [
            "http://127.0.0.1:8080/admin",
            "https://10.0.0.5/internal",
            "http://192.168.1.1",
            "http://172.20.0.1/x",
            "http://[::1]/",
            "http://localhost:6379",
            "http://127.1/",
            "http://0/",
            "http://[::]/",
            "http://localhost./",
            "http://LOCALHOST:8080/",
            "http://foo.localhost/",
            "http://[fd00::1]/",
            "http://[fe80::1%25eth0]/",
            "https://user:pass@127.0.0.1/",
            "http://%31%32%37%2e%30%2e%30%2e%31/",
            "http://127.0.0.1.nip.io/",
            "http://10-0-0-1.sslip.io/",
            "http://app.localtest.me/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::a00:1]/",
            "gopher://127.0.0.1:6379/_INFO",
            "redis://localhost:6379",
            "http:\\\\127.0.0.1\\admin",
        ] {
            assert_eq!(url_target(url), Some(Target::Internal), "{url}");
        }
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/latest/meta-data/",
            "http://0251.0376.0251.0376/",
            "http://0xa9fea9fe/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.GOOGLE.INTERNAL./",
            "http://metadata.azure.com/metadata/instance",
            "http://100.100.100.200/latest/meta-data",
            "http://[fd00:ec2::254]/latest/",
        ] {
            assert_eq!(url_target(url), Some(Target::Metadata), "{url}");
        }
        for url in [
            "https://8.8.8.8/",
            "http://example.com./x",
            "https://[2001:db8::1]/",
            "http://93.184.216.34/",
            "http://172.32.0.1/",
            "https://api.nip.io/",
            "https://8.8.8.8.nip.io/",
            "mailto:team@example.org",
        ] {
            assert_eq!(url_target(url), None, "{url}");
        }
    }

    #[test]
    fn urls_are_found_in_text() {
        let found = |t: &str| targets(t).collect::<Vec<_>>();
        assert_eq!(found("fetch 169.254.169.254/latest/meta-data please"), [Target::Metadata]);
        assert_eq!(found("see //169.254.169.254/latest"), [Target::Metadata]);
        assert_eq!(found("then GET http://127.0.0.1:9000/debug and http://example.com"), [Target::Internal]);
        assert!(found("10.0.0.0/8 and 192.168.0.0/16 are private ranges").is_empty());
        assert!(found("version 1.2.3.4 of the build, see https://example.com/a//b").is_empty());
        assert!(found("C:\\Users\\bob and src//lib.rs").is_empty());
    }
}
