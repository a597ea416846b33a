//! What `/status` reads of the children from `/proc`: the memory of a child's whole
//! process group (`npx` starts `node`, and the memory is the grandchild's).

/// Resident memory in bytes of every process in the group led by `pgid`.
pub fn group_rss(pgid: u32) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut pages = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command's closing parenthesis: state, ppid, pgrp, ... rss is the 22nd.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            pages += fields.get(21).and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    pages * page
}
