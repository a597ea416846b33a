//! Which user is at the other end of an accepted loopback TCP connection: the uid that
//! owns the client's socket, asked of the kernel by its exact addresses (`sock_diag`),
//! else read from its socket tables (`/proc/net/tcp`, `/proc/net/tcp6`), so a server
//! without a token can serve only the user it runs as.
//! Where the tables cannot be read, [`probe`] says so at start-up and a token is needed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

const TCP4: &str = "/proc/net/tcp";
const TCP6: &str = "/proc/net/tcp6";
/// `TCP_TIME_WAIT`: such an entry is a leftover of a closed socket and shows uid 0
/// whoever owned it, so it must never vouch for a connection.
const TIME_WAIT: u8 = 0x06;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no socket {peer} connected to {local} in {tables}")]
    NotFound { peer: SocketAddr, local: SocketAddr, tables: &'static str },
    #[error("{path} line {line} is malformed: {reason}")]
    Malformed { path: &'static str, line: usize, reason: &'static str },
    #[error("this system has no /proc/net/tcp to tell which user owns a connection")]
    Unsupported,
    #[error("cannot read the connection's local address: {0}")]
    LocalAddress(#[source] std::io::Error),
}

/// The uid owning the client end of a loopback connection whose client is at `peer` and
/// whose server end (ours) is at `local`.
///
/// An IPv4 client is in `/proc/net/tcp` even when our socket is IPv6 (it then sees the
/// client as `::ffff:a.b.c.d`), and an IPv6 client socket can reach an IPv4 listener
/// through a v4-mapped address; so a pair of IPv4 (or v4-mapped) addresses is looked for
/// in both tables, plain IPv4 first.
pub fn uid_of_peer(peer: SocketAddr, local: SocketAddr) -> Result<u32, PeerError> {
    let searches = plan(peer, local);
    // First the kernel's exact lookup (microseconds); the tables below walk every socket
    // hash bucket (milliseconds on a large machine), for kernels without sock_diag.
    if let Ok(Some(uid)) = searches.iter().try_fold(None, |found, s| match found {
        Some(uid) => Ok(Some(uid)),
        None => crate::sock_diag::socket_uid(SocketAddr::from(s.peer), SocketAddr::from(s.local)),
    }) {
        return Ok(uid);
    }
    let found = match search_all(&searches)? {
        Some(uid) => Some(uid),
        // The kernel writes a table in pieces while sockets come and go, so one read can
        // miss an entry that was there all along; a second read settles it.
        None => search_all(&searches)?,
    };
    found.ok_or(PeerError::NotFound {
        peer,
        local,
        tables: if searches.len() > 1 { "/proc/net/tcp or /proc/net/tcp6" } else { TCP6 },
    })
}

/// The effective uid of this process: the user a server "runs as". Asked once: it
/// never changes, and every request is checked against it.
pub fn own_uid() -> u32 {
    static OWN: std::sync::LazyLock<u32> = std::sync::LazyLock::new(|| {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    });
    *OWN
}

/// One table to look in, with the addresses as that table writes them.
#[derive(Debug, PartialEq)]
struct Search {
    path: &'static str,
    peer: (IpAddr, u16),
    local: (IpAddr, u16),
}

fn plan(peer: SocketAddr, local: SocketAddr) -> Vec<Search> {
    let as_v4 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    let as_v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let v6 = Search {
        path: TCP6,
        peer: (IpAddr::V6(as_v6(peer.ip())), peer.port()),
        local: (IpAddr::V6(as_v6(local.ip())), local.port()),
    };
    match (as_v4(peer.ip()), as_v4(local.ip())) {
        (Some(p), Some(l)) => {
            vec![Search { path: TCP4, peer: (IpAddr::V4(p), peer.port()), local: (IpAddr::V4(l), local.port()) }, v6]
        }
        _ => vec![v6],
    }
}

fn search_all(searches: &[Search]) -> Result<Option<u32>, PeerError> {
    for s in searches {
        if let Some(uid) = uid_in_table(s.path, &read_table(s.path)?, s.peer, s.local)? {
            return Ok(Some(uid));
        }
    }
    Ok(None)
}

#[cfg(target_os = "linux")]
fn read_table(path: &'static str) -> Result<String, PeerError> {
    std::fs::read_to_string(path).map_err(|source| PeerError::Unreadable { path, source })
}

#[cfg(not(target_os = "linux"))]
fn read_table(_path: &'static str) -> Result<String, PeerError> {
    Err(PeerError::Unsupported)
}

/// Finds the line whose local address is the client's and whose remote address is ours,
/// and returns its `uid` column. Every line is parsed, so a table in a format we do not
/// understand is an error rather than a silent "not found".
fn uid_in_table(
    path: &'static str,
    table: &str,
    peer: (IpAddr, u16),
    local: (IpAddr, u16),
) -> Result<Option<u32>, PeerError> {
    // The first line is the column header.
    for (index, line) in table.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let entry = parse_entry(line).map_err(|reason| PeerError::Malformed { path, line: index + 1, reason })?;
        if entry.local == peer && entry.remote == local && entry.state != TIME_WAIT {
            return Ok(Some(entry.uid));
        }
    }
    Ok(None)
}

struct Entry {
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    state: u8,
    uid: u32,
}

/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...`
fn parse_entry(line: &str) -> Result<Entry, &'static str> {
    let mut fields = line.split_whitespace();
    let mut next = |what| fields.next().ok_or(what);
    next("no slot number")?;
    let local = parse_address(next("no local address")?)?;
    let remote = parse_address(next("no remote address")?)?;
    let state = u8::from_str_radix(next("no state")?, 16).map_err(|_| "state is not hex")?;
    next("no queue sizes")?;
    next("no timer")?;
    next("no retransmit count")?;
    let uid = next("no uid")?.parse().map_err(|_| "uid is not a number")?;
    Ok(Entry { local, remote, state, uid })
}

/// `0100007F:0C1C` or `00000000000000000000000001000000:0C1C`: the address as 32-bit
/// words printed in host byte order (one for IPv4, four for IPv6), the port in network
/// order, all hex.
fn parse_address(field: &str) -> Result<(IpAddr, u16), &'static str> {
    let (hex, port) = field.split_once(':').ok_or("address without a port")?;
    let port = u16::from_str_radix(port, 16).map_err(|_| "port is not hex")?;
    let word = |i: usize| {
        hex.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
            .ok_or("address is not hex")
    };
    let ip = match hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return Err("address is neither 8 nor 32 hex digits"),
    };
    Ok((ip, port))
}

/// The outcome of the lookup for one connection, made once when it is accepted and kept
/// with it (cheap to clone into every request).
#[derive(Debug, Clone)]
pub enum Owner {
    Uid(u32),
    Unknown(Arc<PeerError>),
}

impl Owner {
    pub fn of(peer: SocketAddr, local: SocketAddr) -> Owner {
        match uid_of_peer(peer, local) {
            Ok(uid) => Owner::Uid(uid),
            Err(e) => Owner::Unknown(Arc::new(e)),
        }
    }
}

/// Why a connection is refused by [`check_same_user`]. The text starts with "Forbidden:"
/// and ends without a full stop, so each server can add how to share it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error(
        "Forbidden: this daemon serves only uid {own} (the user it runs as); this connection belongs to uid {peer}"
    )]
    OtherUser { own: u32, peer: u32 },
    #[error(
        "Forbidden: this daemon serves only uid {own} (the user it runs as) and cannot tell whose connection this is: {reason}"
    )]
    Unknown { own: u32, reason: Arc<PeerError> },
    #[error(
        "Forbidden: this daemon serves only uid {own} (the user it runs as) and did not look up whose connection this is"
    )]
    NotLookedUp { own: u32 },
}

/// Serves only this process's own user. A connection whose owner could not be found, or
/// was never looked up (`None`), is refused: the rule fails closed.
pub fn check_same_user(owner: Option<&Owner>) -> Result<(), Refusal> {
    let own = own_uid();
    match owner {
        Some(Owner::Uid(uid)) if *uid == own => Ok(()),
        Some(Owner::Uid(peer)) => Err(Refusal::OtherUser { own, peer: *peer }),
        Some(Owner::Unknown(reason)) => Err(Refusal::Unknown { own, reason: reason.clone() }),
        None => Err(Refusal::NotLookedUp { own }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open a test connection on {ip}: {source}")]
    Connect { ip: IpAddr, source: std::io::Error },
    #[error(transparent)]
    Lookup(#[from] PeerError),
    #[error("a test connection of uid {own} was reported as belonging to uid {found}")]
    WrongUid { own: u32, found: u32 },
}

/// Whether this system can tell connections' users apart: one connection to ourselves
/// on `ip` (the address the server will listen on), looked up like a client's. Costs a
/// socket pair and one lookup, so servers run it at start-up.
pub fn probe(ip: IpAddr) -> Result<(), ProbeError> {
    probe_with(ip, uid_of_peer)
}

fn probe_with(ip: IpAddr, lookup: impl Fn(SocketAddr, SocketAddr) -> Result<u32, PeerError>) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Connect { ip, source };
    let listener = TcpListener::bind((ip, 0)).map_err(io)?;
    let client = TcpStream::connect(listener.local_addr().map_err(io)?).map_err(io)?;
    let (server_end, peer) = listener.accept().map_err(io)?;
    let local = server_end.local_addr().map_err(io)?;
    let found = lookup(peer, local)?;
    drop((client, server_end));
    let own = own_uid();
    if found == own { Ok(()) } else { Err(ProbeError::WrongUid { own, found }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A system whose tables cannot be read fails the start-up probe with the reason,
    /// and one that reports a wrong owner fails it too.
    #[test]
    fn the_probe_fails_where_users_cannot_be_told_apart() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let unreadable = |_: SocketAddr, _: SocketAddr| -> Result<u32, PeerError> {
            Err(PeerError::Unreadable { path: TCP4, source: std::io::Error::from(std::io::ErrorKind::NotFound) })
        };
        let err = probe_with(ip, unreadable).unwrap_err();
        assert!(err.to_string().contains("/proc/net/tcp"), "{err}");
        let wrong = |_: SocketAddr, _: SocketAddr| Ok(own_uid().wrapping_add(1));
        assert!(matches!(probe_with(ip, wrong), Err(ProbeError::WrongUid { .. })));
        assert!(probe(ip).is_ok(), "this machine can tell users apart");
    }

    fn addr(s: &str) -> (IpAddr, u16) {
        let a: SocketAddr = s.parse().unwrap();
        (a.ip(), a.port())
    }

    // Recorded from a live system (uids edited), server on 127.0.0.1:3100 (0x0C1C): its
    // listening socket, a client in TIME_WAIT (uid 0, as the kernel shows them), a client
    // of uid 65534 at port 40412 (0x9DDC), and the server's end of that connection.
    const TCP4_TABLE: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0C1C 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 316 1 000000004284ae3b 100 0 0 10 0
   1: 0100007F:8668 0100007F:0C1C 06 00000000:00000000 03:0000157D 00000000     0        0 0 3 00000000efe69838
   2: 0100007F:9DDC 0100007F:0C1C 01 00000000:00000000 00:00000000 00000000 65534        0 21102 2 00000000e3e264d8 20 0 0 10 -1
   3: 0100007F:0C1C 0100007F:9DDC 01 00000000:00000000 00:00000000 00000000  1000        0 21103 1 00000000e3e264d9 20 0 0 10 -1
";

    // Server on [::1]:3100 and on [::]:3100 (v4-mapped clients): a ::1 client of uid 1001
    // at port 54997 (0xD6D5), and a v4-mapped client of uid 1002 at port 40424 (0x9DE8).
    const TCP6_TABLE: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0C1C 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 20932 1 0000000024b2e12e 100 0 0 10 0
   1: 00000000000000000000000001000000:D6D5 00000000000000000000000001000000:0C1C 01 00000000:00000000 00:00000000 00000000  1001        0 20940 2 00000000b5f4e150 20 0 0 10 -1
   2: 0000000000000000FFFF00000100007F:9DE8 0000000000000000FFFF00000100007F:0C1C 01 00000000:00000000 00:00000000 00000000  1002        0 21106 2 00000000b5f4e151 20 0 0 10 -1
   3: 0000000000000000FFFF00000100007F:0C1C 0000000000000000FFFF00000100007F:9DE8 01 00000000:00000000 00:00000000 00000000  1000        0 21107 1 00000000f891e758 20 0 0 10 -1
";

    // The recorded tables were written by a little-endian kernel (host byte order).
    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_client_is_found_by_its_address_and_ours() {
        let uid = uid_in_table(TCP4, TCP4_TABLE, addr("127.0.0.1:40412"), addr("127.0.0.1:3100")).unwrap();
        assert_eq!(uid, Some(65534));
        // The server's own end of a connection is not a client.
        let uid = uid_in_table(TCP4, TCP4_TABLE, addr("127.0.0.1:3100"), addr("127.0.0.1:40412")).unwrap();
        assert_eq!(uid, Some(1000), "only the line with the client's address as its local one counts");
        let uid = uid_in_table(TCP4, TCP4_TABLE, addr("127.0.0.1:40412"), addr("127.0.0.1:3101")).unwrap();
        assert_eq!(uid, None, "a client of another server");
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn time_wait_entries_never_vouch() {
        assert_eq!(uid_in_table(TCP4, TCP4_TABLE, addr("127.0.0.1:34408"), addr("127.0.0.1:3100")).unwrap(), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv6_and_v4_mapped_clients() {
        assert_eq!(uid_in_table(TCP6, TCP6_TABLE, addr("[::1]:54997"), addr("[::1]:3100")).unwrap(), Some(1001));
        let mapped = uid_in_table(TCP6, TCP6_TABLE, addr("[::ffff:127.0.0.1]:40424"), addr("[::ffff:127.0.0.1]:3100"));
        assert_eq!(mapped.unwrap(), Some(1002));
    }

    #[test]
    fn v4_pairs_are_looked_for_in_both_tables_plain_first() {
        let v4 = |s: &str| s.parse::<SocketAddr>().unwrap();
        let expected = vec![
            Search { path: TCP4, peer: addr("127.0.0.1:40412"), local: addr("127.0.0.1:3100") },
            Search { path: TCP6, peer: addr("[::ffff:127.0.0.1]:40412"), local: addr("[::ffff:127.0.0.1]:3100") },
        ];
        // An IPv4 listener, and an IPv6 one that sees the IPv4 client as v4-mapped.
        assert_eq!(plan(v4("127.0.0.1:40412"), v4("127.0.0.1:3100")), expected);
        assert_eq!(plan(v4("[::ffff:127.0.0.1]:40412"), v4("[::ffff:127.0.0.1]:3100")), expected);
        assert_eq!(
            plan(v4("[::1]:54997"), v4("[::1]:3100")),
            vec![Search { path: TCP6, peer: addr("[::1]:54997"), local: addr("[::1]:3100") }]
        );
    }

    #[test]
    fn a_line_we_cannot_read_is_an_error_with_its_number() {
        let table = "  sl  local_address rem_address   st\n   0: 0100007F:0C1C 00000000:0000 0A\n";
        let err = uid_in_table(TCP4, table, addr("127.0.0.1:1"), addr("127.0.0.1:2")).unwrap_err();
        assert!(matches!(err, PeerError::Malformed { line: 2, .. }), "{err}");
        let table = "header\n   0: 7F00001:0C1C 00000000:0000 0A 0:0 0:0 0 0\n";
        let err = uid_in_table(TCP4, table, addr("127.0.0.1:1"), addr("127.0.0.1:2")).unwrap_err();
        assert!(err.to_string().contains("line 2 is malformed: address is neither"), "{err}");
        let table = "header\n   0: 0100007F:0C1C 0100007F:0C1D 01 0:0 0:0 0 nobody\n";
        let err = uid_in_table(TCP4, table, addr("127.0.0.1:3100"), addr("127.0.0.1:3101")).unwrap_err();
        assert!(err.to_string().contains("uid is not a number"), "{err}");
    }

    /// Accepts one connection on `listen` from a client connecting to `connect` and
    /// looks the client up.
    fn lookup_real(listen: &str, connect: impl Fn(u16) -> SocketAddr) -> u32 {
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(connect(port)).unwrap();
        let (server_end, peer) = listener.accept().unwrap();
        uid_of_peer(peer, server_end.local_addr().unwrap()).unwrap_or_else(|e| panic!("{listen}: {e}"))
    }

    #[test]
    fn a_real_connection_belongs_to_our_own_uid() {
        assert_eq!(lookup_real("127.0.0.1:0", |p| SocketAddr::from(([127, 0, 0, 1], p))), own_uid());
    }

    #[test]
    fn a_real_ipv6_connection_and_a_v4_client_of_a_dual_stack_listener() {
        let v6 = |p| SocketAddr::from((Ipv6Addr::LOCALHOST, p));
        assert_eq!(lookup_real("[::1]:0", v6), own_uid());
        // The listener sees ::ffff:127.0.0.1; the client's socket is in /proc/net/tcp.
        assert_eq!(lookup_real("[::]:0", |p| SocketAddr::from(([127, 0, 0, 1], p))), own_uid());
        // An IPv6 client socket reaching an IPv4 listener through a v4-mapped address.
        let mapped = |p| SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), p));
        assert_eq!(lookup_real("127.0.0.1:0", mapped), own_uid());
    }

    #[test]
    fn a_connection_that_does_not_exist_is_not_found() {
        let err = uid_of_peer("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()).unwrap_err();
        assert!(matches!(err, PeerError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("/proc/net/tcp or /proc/net/tcp6"), "{err}");
    }

    #[test]
    fn probe_succeeds_here() {
        probe(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    }

    #[test]
    fn only_our_own_uid_passes() {
        let own = own_uid();
        assert!(check_same_user(Some(&Owner::Uid(own))).is_ok());
        let other = own.wrapping_add(1);
        let err = check_same_user(Some(&Owner::Uid(other))).unwrap_err().to_string();
        assert!(err.contains(&format!("serves only uid {own}")) && err.contains(&format!("belongs to uid {other}")));
    }

    #[test]
    fn a_failed_or_missing_lookup_refuses() {
        let failed = Owner::Unknown(Arc::new(PeerError::Unsupported));
        let err = check_same_user(Some(&failed)).unwrap_err().to_string();
        assert!(err.starts_with("Forbidden:") && err.contains("cannot tell whose connection"), "{err}");
        assert!(matches!(check_same_user(None), Err(Refusal::NotLookedUp { .. })));
    }
}
