//! Image references parsed by hand, with the grammar of the distribution project's reference
//! package (as `oci_spec`'s regular expression encodes it) and containerd's normalisation.
//!
//! `oci_spec` parses with one large regular expression whose compiled program (about 4 MiB) and
//! per-thread match caches (about 2.6 MiB for each thread that ever parsed) stay resident for the
//! life of the process; ingotd resolves an image name on every CreateContainer, from whichever
//! thread runs it, so that was most of its memory after a day of pods.

use oci_client::Reference;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_REPOSITORIES: &str = "library";
const DEFAULT_TAG: &str = "latest";
/// The longest repository name.
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn path_component(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.is_empty() || !is_lower_alnum(bytes[0]) || !is_lower_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_lower_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_lower_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &s[start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `host[.host...][:port]`, each label `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn tag(s: &str) -> bool {
    let bytes = s.as_bytes();
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    !bytes.is_empty()
        && bytes.len() <= TAG_MAX
        && word(&bytes[0])
        && bytes.iter().all(|b| word(b) || *b == b'.' || *b == b'-')
}

/// `algorithm:hex`, with the lengths of sha256, sha384 and sha512.
fn digest(s: &str) -> Result<(), &'static str> {
    let (algorithm, hex) = s.split_once(':').ok_or("invalid checksum digest format")?;
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        part.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && part.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("invalid checksum digest format");
    }
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length");
    }
    Ok(())
}

/// Parses `[domain/]path[:tag][@digest]`; a name without a domain is on Docker Hub, a Docker
/// Hub name of one component is under `library/`, and a missing tag is `latest` unless a digest
/// is given. The error is the reason.
pub fn parse(reference: &str) -> Result<Reference, &'static str> {
    if reference.is_empty() {
        return Err("empty");
    }
    let (rest, digest_part) = match reference.split_once('@') {
        Some((rest, d)) => {
            digest(d)?;
            (rest, Some(d.to_string()))
        }
        None => (reference, None),
    };
    // A tag follows the first ':' after the last '/' (a ':' before it is a registry port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag_part) = match rest[last_slash..].find(':') {
        Some(i) => {
            let t = &rest[last_slash + i + 1..];
            if !tag(t) {
                return Err("invalid tag format");
            }
            (&rest[..last_slash + i], Some(t.to_string()))
        }
        None => (rest, None),
    };
    let components: Vec<&str> = name.split('/').collect();
    let (first, rest) = components
        .split_first()
        .ok_or("repository name must have at least one component")?;
    // The grammar: `[domain/]path`, a path of lowercase components.
    let first_ok = path_component(first) || (!rest.is_empty() && domain(first));
    if !first_ok || !rest.iter().all(|c| path_component(c)) {
        return Err(if name.bytes().any(|b| b.is_ascii_uppercase()) {
            "repository name must be lowercase"
        } else {
            "invalid reference format"
        });
    }
    // The first component is the registry when it looks like a host (distribution's
    // splitDomain): a dot, a port, or localhost.
    let (mut registry, mut repository) =
        if !rest.is_empty() && (first.contains(['.', ':']) || *first == "localhost") {
            (*first, rest.join("/"))
        } else {
            (DOCKER_HUB, name.to_string())
        };
    if registry == DOCKER_HUB_LEGACY {
        registry = DOCKER_HUB;
    }
    if registry == DOCKER_HUB && !repository.contains('/') {
        repository = format!("{OFFICIAL_REPOSITORIES}/{repository}");
    }
    if repository.len() > NAME_MAX {
        return Err("repository name must not be more than 255 characters");
    }
    let registry = registry.to_string();
    Ok(match (tag_part, digest_part) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (t, None) => Reference::with_tag(
            registry,
            repository,
            t.unwrap_or_else(|| DEFAULT_TAG.into()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same answers as oci_spec's regular-expression parser, on its own test table and
    /// more.
    #[test]
    fn agrees_with_oci_spec() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases = [
            "busybox".to_string(),
            "busybox:1.36".into(),
            "test.com:tag".into(),
            "test.com:5000".into(),
            "test.com/repo:tag".into(),
            "test:5000/repo".into(),
            "test:5000/repo:tag".into(),
            format!("test:5000/repo@{digest}"),
            format!("test:5000/repo:tag@{digest}"),
            "lowercase:Uppercase".into(),
            "sub-dom1.foo.com/bar/baz/quux".into(),
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
            "b.gcr.io/test.example.com/my-app:test.example.com".into(),
            "xn--n3h.com/myimage:xn--n3h.com".into(),
            format!("xn--7o8h.com/myimage:xn--7o8h.com@{digest}"),
            "foo_bar.com:8080".into(),
            "foo/foo_bar.com:8080".into(),
            "localhost/foo".into(),
            "localhost:5000/foo/bar".into(),
            "127.0.0.1:5000/ingot/busybox:test".into(),
            "k8s/pause:3.9".into(),
            "index.docker.io/busybox".into(),
            "registry.k8s.io/e2e-test-images/busybox:1.29-2".into(),
            "a__b/c--d/e.f".into(),
            "Foo/bar".into(),
            "index.docker.io/library/busybox".into(),
            // Refused.
            "".into(),
            "a b".into(),
            "busybox:tag:extra".into(),
            "docker.io/library/Busybox".into(),
            "Uppercase:tag".into(),
            "a___b".into(),
            "-foo".into(),
            "foo-".into(),
            "foo//bar".into(),
            "foo/".into(),
            ":tag".into(),
            "repo@sha256:abc".into(),
            format!("repo@sha1:{}", "a".repeat(40)),
            format!("repo@sha256:{}", "g".repeat(64)),
            format!("repo:{}", "t".repeat(129)),
            format!("repo:{}", "t".repeat(128)),
            "my.host:notaport/repo".into(),
            "-host.com/repo".into(),
            format!("{}/x", "a".repeat(256)),
            "repo:-tag".into(),
            "repo@".into(),
        ];
        for case in cases {
            let ours = parse(&case).map(|r| r.whole()).ok();
            let theirs = case.parse::<Reference>().map(|r| r.whole()).ok();
            assert_eq!(ours, theirs, "{case:?}");
        }
    }
}
