//! The owner of one TCP socket by its exact address pair, asked of the kernel over
//! netlink (`NETLINK_SOCK_DIAG`, an `inet_diag` request without `NLM_F_DUMP`): a hash
//! lookup of microseconds, where reading `/proc/net/tcp` walks every bucket of the
//! socket tables (milliseconds on a machine with much memory) for each connection.

use std::io;
use std::net::{IpAddr, SocketAddr};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const TCP_TIME_WAIT: u8 = 6;
/// `INET_DIAG_NOCOOKIE`: look the socket up by its addresses alone.
const NO_COOKIE: u32 = u32::MAX;
/// `struct nlmsghdr`, then `struct inet_diag_req_v2` (4 bytes, the states mask, then the
/// 48-byte `struct inet_diag_sockid`).
const REQUEST_LEN: usize = 16 + 8 + 48;
/// `struct nlmsghdr`, then `struct inet_diag_msg` up to and with `idiag_uid` (offset 64).
const UID_OFFSET: usize = 16 + 64;

/// What the kernel says of the socket whose local end is `local` and remote end is
/// `remote`: `Ok(Some(uid))`, `Ok(None)` when there is no such live socket, or the error
/// of a kernel that cannot be asked this way.
pub fn socket_uid(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u32>> {
    let family = match (local.ip(), remote.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
        _ => return Ok(None),
    };
    let mut request = [0u8; REQUEST_LEN];
    request[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
    request[16] = family as u8;
    request[17] = libc::IPPROTO_TCP as u8;
    request[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    let id = &mut request[24..];
    id[0..2].copy_from_slice(&local.port().to_be_bytes());
    id[2..4].copy_from_slice(&remote.port().to_be_bytes());
    id[4..20].copy_from_slice(&address_words(local.ip()));
    id[20..36].copy_from_slice(&address_words(remote.ip()));
    id[40..44].copy_from_slice(&NO_COOKIE.to_ne_bytes());
    id[44..48].copy_from_slice(&NO_COOKIE.to_ne_bytes());

    let socket = Netlink::open()?;
    socket.send(&request)?;
    let mut reply = [0u8; 512];
    let n = socket.recv(&mut reply)?;
    let reply = &reply[..n];
    let message_type = u16::from_ne_bytes([*reply.get(4).unwrap_or(&0), *reply.get(5).unwrap_or(&0)]);
    if message_type == NLMSG_ERROR {
        let errno = reply.get(16..20).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        return match -errno {
            libc::ENOENT => Ok(None),
            0 => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if message_type != SOCK_DIAG_BY_FAMILY || n < UID_OFFSET + 4 {
        return Err(io::Error::other(format!("unexpected sock_diag reply (type {message_type}, {n} bytes)")));
    }
    let state = reply[16 + 1];
    if state == TCP_TIME_WAIT {
        // A leftover of a closed socket (shown as uid 0): it vouches for nobody.
        return Ok(None);
    }
    let uid = &reply[UID_OFFSET..UID_OFFSET + 4];
    Ok(Some(u32::from_ne_bytes([uid[0], uid[1], uid[2], uid[3]])))
}

/// An address as `inet_diag_sockid` holds it: 16 bytes in network order, an IPv4
/// address in the first 4.
fn address_words(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    out
}

/// A netlink socket, closed on drop.
struct Netlink(libc::c_int);

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned by the result.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = Netlink(fd);
        // A reply that never comes must not hold the accept loop: a second is plenty.
        let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
        // SAFETY: setsockopt(2) on our descriptor with a valid timeval of the right size.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data; zeroed means "the kernel" (pid 0, no groups).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sendto(2) with our descriptor, a buffer of `message.len()` bytes and a
        // sockaddr_nl of the size given.
        let sent = unsafe {
            libc::sendto(
                self.0,
                message.as_ptr().cast(),
                message.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    fn recv(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: recv(2) into a buffer of `buffer.len()` bytes we own.
        let n = unsafe { libc::recv(self.0, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns, once.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_of_a_real_connection_in_both_directions() {
        for ip in ["127.0.0.1", "::1"] {
            let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server_end, peer) = listener.accept().unwrap();
            let local = server_end.local_addr().unwrap();
            // SAFETY: geteuid(2) has no preconditions.
            let me = unsafe { libc::geteuid() };
            assert_eq!(socket_uid(peer, local).unwrap(), Some(me), "{ip}: the client's socket");
            assert_eq!(socket_uid(local, peer).unwrap(), Some(me), "{ip}: the server's end");
            drop((client, server_end));
        }
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(socket_uid(nobody, other).unwrap(), None, "no such socket");
    }
}
