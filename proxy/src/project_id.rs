//! `project_id = "git-remote"` (SPEC 2.12, 3.2): a project's identity across machines,
//! sent as `Mcp-Project-Id`. Two teammates clone one repository at different paths, so a
//! team daemon cannot key memory by path; the id is the project's `origin` remote,
//! normalised so every spelling of one repository gives one id (`git@github.com:org/repo.git`,
//! `ssh://git@github.com/org/repo.git` and `https://user:token@github.com/org/repo` all give
//! `github.com/org/repo`, never with credentials), else the project's path.
//!
//! The remote is read from the repository's `config` file, not by running `git`: it is a
//! few small file reads (no process to spawn and bound with a timeout, nothing to go wrong
//! on a machine without `git` on `PATH`, nothing the environment's `GIT_*` variables
//! change), and the cases that matter are few: `.git` a directory, or a file naming the
//! git directory (`git worktree add`, submodules), whose `commondir` holds the shared
//! config. What this does not do, where `git remote get-url` would: `url.<base>.insteadOf`
//! rewrites and `include`d config files (an `origin` set only there falls back to the path).

use std::path::{Path, PathBuf};

/// The id for `project` (an absolute directory, as the proxy sends it in
/// `Mcp-Project-Path`): the normalised `origin` remote of the repository holding it, with
/// `#<sub/dir>` when the project is a directory below the work tree's root (so two
/// projects of one monorepo stay apart, as their paths keep them apart locally); the
/// project's path as given when there is no repository or no usable `origin`.
pub fn identity(project: &str) -> String {
    remote_identity(Path::new(project)).unwrap_or_else(|| project.to_owned())
}

fn remote_identity(project: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(project).ok()?;
    let (root, git_dir) = find_repository(&dir)?;
    let config = std::fs::read_to_string(common_dir(&git_dir).join("config")).ok()?;
    let id = normalise_remote(&origin_url(&config)?)?;
    match dir.strip_prefix(&root).ok()?.to_str()? {
        "" => Some(id),
        sub => Some(format!("{id}#{sub}")),
    }
}

/// The work tree's root and git directory of the repository holding `dir`, looked for
/// upwards as git does: a `.git` directory, or a `.git` file saying `gitdir: PATH`
/// (relative to the file's directory).
fn find_repository(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    for root in dir.ancestors() {
        let dot_git = root.join(".git");
        let Ok(meta) = std::fs::metadata(&dot_git) else { continue };
        if meta.is_dir() {
            return Some((root.to_path_buf(), dot_git));
        }
        let text = std::fs::read_to_string(&dot_git).ok()?;
        let target = text.lines().next()?.strip_prefix("gitdir:")?.trim();
        return Some((root.to_path_buf(), root.join(target)));
    }
    None
}

/// Where a git directory's shared files are: a linked worktree's `commondir` names the
/// main repository's git directory (relative to its own); any other git directory is its
/// own.
fn common_dir(git_dir: &Path) -> PathBuf {
    match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(text) if !text.trim().is_empty() => git_dir.join(text.trim()),
        _ => git_dir.to_path_buf(),
    }
}

/// The first `url` of `[remote "origin"]` in a git config file (what `git remote get-url
/// origin` prints, without `insteadOf`). Follows git's syntax: section names and keys
/// are case-insensitive, the subsection is not (except in the old `[remote.origin]`
/// form, lower-cased); values may be quoted, escaped, continued with a trailing `\`, and
/// end at `#` or `;` outside quotes. A value git would refuse (a bad escape, an
/// unterminated quote) counts as no remote.
pub fn origin_url(config: &str) -> Option<String> {
    let mut chars = config.chars().filter(|c| *c != '\r').peekable();
    let mut in_origin = false;
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None => return None,
            Some('#' | ';') => skip_line(&mut chars),
            Some('[') => {
                chars.next();
                in_origin = section_is_origin(&mut chars)?;
            }
            Some(_) => {
                let mut key = String::new();
                while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '-') {
                    key.push(c);
                }
                while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
                if key.is_empty() {
                    return None; // not git config syntax
                }
                if chars.next_if_eq(&'=').is_none() {
                    // A key without a value (a boolean true); anything else is not git's syntax.
                    match chars.peek() {
                        None | Some('\n' | '#' | ';') => continue,
                        Some(_) => return None,
                    }
                }
                let value = parse_value(&mut chars)?;
                if in_origin && key.eq_ignore_ascii_case("url") {
                    return Some(value);
                }
            }
        }
    }
}

fn skip_line(chars: &mut impl Iterator<Item = char>) {
    for c in chars.by_ref() {
        if c == '\n' {
            return;
        }
    }
}

/// After `[`: reads the header up to `]` and says whether it is `[remote "origin"]` (or
/// the old `[remote.origin]`); `None` for a header git would refuse.
fn section_is_origin(chars: &mut std::iter::Peekable<impl Iterator<Item = char>>) -> Option<bool> {
    let mut section = String::new();
    while let Some(c) = chars.next_if(|c| *c != ']' && *c != '"' && !c.is_whitespace()) {
        section.push(c);
    }
    while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
    if chars.next_if_eq(&'"').is_some() {
        let mut sub = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => sub.push(chars.next()?),
                '\n' => return None,
                c => sub.push(c),
            }
        }
        chars.next_if_eq(&']')?;
        return Some(section.eq_ignore_ascii_case("remote") && sub == "origin");
    }
    chars.next_if_eq(&']')?;
    Some(section.eq_ignore_ascii_case("remote.origin"))
}

/// A value after `=`, as git's `parse_value` reads it: up to the end of the line (or of a
/// comment), whitespace outside quotes kept only between other characters.
fn parse_value(chars: &mut impl Iterator<Item = char>) -> Option<String> {
    let mut value = String::new();
    let (mut quoted, mut comment, mut spaces) = (false, false, 0usize);
    loop {
        let Some(c) = chars.next() else {
            return (!quoted).then_some(value);
        };
        if c == '\n' {
            return (!quoted).then_some(value);
        }
        if comment {
            continue;
        }
        if c.is_whitespace() && !quoted {
            if !value.is_empty() {
                spaces += 1;
            }
            continue;
        }
        if !quoted && (c == '#' || c == ';') {
            comment = true;
            continue;
        }
        value.extend(std::iter::repeat_n(' ', std::mem::take(&mut spaces)));
        match c {
            '\\' => match chars.next()? {
                '\n' => {}
                't' => value.push('\t'),
                'b' => value.push('\u{8}'),
                'n' => value.push('\n'),
                c @ ('\\' | '"') => value.push(c),
                _ => return None,
            },
            '"' => quoted = !quoted,
            c => value.push(c),
        }
    }
}

/// A remote URL as `host/path`: the scheme, any user name and password (or token), the
/// port, a query and a fragment are dropped, the host lower-cased, a trailing `/` and
/// `.git` removed. Both of git's forms: `scheme://[user[:password]@]host[:port]/path` and
/// scp-like `[user@]host:path`. A remote that is a path on this machine (`/srv/git/x.git`,
/// `file:///srv/git/x.git`) gives that path without `.git`; a relative path, or a URL
/// without a host or a path, gives `None`.
pub fn normalise_remote(url: &str) -> Option<String> {
    let url = url.trim();
    // Credentials end at the last `@`, wherever it is: a password holding a `/` or a `:`
    // (which git itself would misread) must never end up in the id. A path holding an
    // `@`, which the hosts we know refuse in repository names, is misread instead.
    let after_credentials = |s: &'_ str| s.rsplit_once('@').map_or(s, |(_, rest)| rest).to_owned();
    let (host, path) = if let Some((scheme, rest)) = url.split_once("://") {
        if scheme.eq_ignore_ascii_case("file") {
            return local_path(rest);
        }
        let rest = after_credentials(rest);
        let (authority, path) = rest.split_once('/').unwrap_or((&rest, ""));
        (authority.to_owned(), path.to_owned())
    } else if url.starts_with('/') {
        return local_path(url);
    } else {
        // scp-like: a `:` before the first `/`, else it is a relative path.
        let rest = after_credentials(url);
        let (host, path) = match rest.strip_prefix('[') {
            // `[::1]:path`, `[host:22]:path`
            Some(bracketed) => {
                let (host, path) = bracketed.split_once(']')?;
                let host = if host.matches(':').count() > 1 { format!("[{host}]") } else { host.to_owned() };
                (host, path.strip_prefix(':')?)
            }
            None => rest.split_once(':').map(|(host, path)| (host.to_owned(), path))?,
        };
        if host.contains('/') {
            return None;
        }
        (host, path.to_owned())
    };
    let host = strip_port(&host).to_ascii_lowercase();
    let path = trim_path(path.split(['?', '#']).next().unwrap_or_default());
    if host.is_empty() || path.is_empty() {
        return None;
    }
    Some(format!("{host}/{path}"))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.split(':').next().unwrap_or(host)
}

/// `/a/b.git/` → `a/b`.
fn trim_path(path: &str) -> &str {
    let path = path.trim_matches('/');
    path.strip_suffix(".git").unwrap_or(path).trim_end_matches('/')
}

/// A remote on this machine: its absolute path without `.git` (a `file://` URL's host,
/// empty or `localhost`, dropped).
fn local_path(path: &str) -> Option<String> {
    let path = path.strip_prefix("localhost").unwrap_or(path);
    if !path.starts_with('/') {
        return None;
    }
    let trimmed = trim_path(path);
    (!trimmed.is_empty()).then(|| format!("/{trimmed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_one_repository_gives_one_id() {
        for url in [
            "git@github.com:org/repo.git",
            "git@github.com:org/repo",
            "github.com:org/repo.git",
            "ssh://git@github.com/org/repo.git",
            "ssh://git@github.com:22/org/repo.git",
            "git+ssh://git@GitHub.com/org/repo.git/",
            "https://github.com/org/repo",
            "https://github.com/org/repo/",
            "https://github.com/org/repo.git",
            "https://user:token@github.com/org/repo.git",
            "https://ghp_secret@github.com/org/repo",
            "https://user:p%40ss:w@rd@github.com:443/org/repo.git?x=1#frag",
            "user:password@github.com:org/repo.git",
            "git://github.com/org/repo.git",
            "  https://github.com/org/repo  ",
        ] {
            assert_eq!(normalise_remote(url).as_deref(), Some("github.com/org/repo"), "{url}");
        }
    }

    #[test]
    fn different_repositories_stay_apart_and_credentials_never_leak() {
        assert_eq!(normalise_remote("git@github.com:org/other.git").as_deref(), Some("github.com/org/other"));
        assert_eq!(normalise_remote("git@gitlab.com:org/repo.git").as_deref(), Some("gitlab.com/org/repo"));
        assert_eq!(
            normalise_remote("https://gitlab.example.com/group/sub/repo.git").as_deref(),
            Some("gitlab.example.com/group/sub/repo")
        );
        // The path's case is kept: only some hosts ignore it.
        assert_eq!(normalise_remote("https://github.com/Org/Repo").as_deref(), Some("github.com/Org/Repo"));
        assert_eq!(normalise_remote("ssh://git@[::1]:2222/x/y.git").as_deref(), Some("[::1]/x/y"));
        assert_eq!(normalise_remote("ssh://host/~user/repo.git").as_deref(), Some("host/~user/repo"));
        assert_eq!(
            normalise_remote("git@[gitlab.example.com:2222]:x/y.git").as_deref(),
            Some("gitlab.example.com/x/y")
        );
        assert_eq!(normalise_remote("git@[::1]:x/y.git").as_deref(), Some("[::1]/x/y"));
        for url in [
            "https://alice:hunter2@example.com/a/b",
            "https://hunter2@example.com/a/b",
            "alice:hunter2@example.com:a/b",
            "https://alice:hun/ter2@example.com/a/b",
            "alice:hun/ter2@example.com:a/b",
        ] {
            let id = normalise_remote(url).unwrap();
            assert_eq!(id, "example.com/a/b", "{url}");
            assert!(!id.contains("hun") && !id.contains("alice"), "{id}");
        }
    }

    #[test]
    fn local_and_unusable_remotes() {
        assert_eq!(normalise_remote("/srv/git/repo.git").as_deref(), Some("/srv/git/repo"));
        assert_eq!(normalise_remote("file:///srv/git/repo.git/").as_deref(), Some("/srv/git/repo"));
        assert_eq!(normalise_remote("file://localhost/srv/git/repo").as_deref(), Some("/srv/git/repo"));
        for url in
            ["../repo.git", "repo", "", "https://github.com", "https://github.com/", "git@github.com:", "file://"]
        {
            assert_eq!(normalise_remote(url), None, "{url:?}");
        }
    }

    #[test]
    fn reads_the_origin_url_as_git_does() {
        let config = "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\
            [remote \"upstream\"]\n\turl = https://github.com/up/repo\n\
            [remote \"origin\"]\n\turl = git@github.com:org/repo.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n\
            \turl = https://second.example/x\n";
        assert_eq!(origin_url(config).as_deref(), Some("git@github.com:org/repo.git"));
        // Case, quoting, comments, continuation lines, the old header form.
        let config = "# comment\n[Remote \"origin\"] ; remote\n  URL = \"https://github.com/org/my repo\" # trailing\n";
        assert_eq!(origin_url(config).as_deref(), Some("https://github.com/org/my repo"));
        assert_eq!(origin_url("[remote.ORIGIN]\nurl=https://x/y\\\n/z\n").as_deref(), Some("https://x/y/z"));
        assert_eq!(origin_url("[remote \"origin\"] url = a:b\n").as_deref(), Some("a:b"));
        assert_eq!(origin_url("[core]\nbare\n[remote \"origin\"]\nurl = a:b\r\n").as_deref(), Some("a:b"));
        // The subsection is case-sensitive in the quoted form; no origin, no URL.
        assert_eq!(origin_url("[remote \"Origin\"]\nurl = a:b\n"), None);
        assert_eq!(origin_url("[remote \"upstream\"]\nurl = a:b\n"), None);
        assert_eq!(origin_url(""), None);
        // What git refuses counts as no remote.
        assert_eq!(origin_url("[remote \"origin\"]\nurl = \"a:b\n"), None);
        assert_eq!(origin_url("[remote \"origin\"]\nurl = a\\qb\n"), None);
    }

    fn git_dir(root: &Path, url: Option<&str>) {
        std::fs::create_dir_all(root.join(".git")).unwrap();
        let mut config = "[core]\n\tbare = false\n".to_owned();
        if let Some(url) = url {
            config.push_str(&format!("[remote \"origin\"]\n\turl = {url}\n"));
        }
        std::fs::write(root.join(".git/config"), config).unwrap();
    }

    #[test]
    fn identity_of_clones_worktrees_subdirectories_and_plain_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let (a, b, other, plain, no_origin) =
            (base.join("a"), base.join("elsewhere/b"), base.join("other"), base.join("plain"), base.join("no-origin"));
        git_dir(&a, Some("git@github.com:org/repo.git"));
        git_dir(&b, Some("https://user:token@github.com/org/repo"));
        git_dir(&other, Some("https://github.com/org/other"));
        git_dir(&no_origin, None);
        std::fs::create_dir_all(&plain).unwrap();
        let id = |p: &Path| identity(p.to_str().unwrap());
        assert_eq!(id(&a), "github.com/org/repo");
        assert_eq!(id(&b), "github.com/org/repo");
        assert_eq!(id(&other), "github.com/org/other");
        assert_eq!(id(&plain), plain.to_str().unwrap());
        assert_eq!(id(&no_origin), no_origin.to_str().unwrap());
        // A directory below the root: the remote and the directory within it.
        std::fs::create_dir_all(a.join("packages/api")).unwrap();
        assert_eq!(id(&a.join("packages/api")), "github.com/org/repo#packages/api");
        // A linked worktree: `.git` is a file naming its git directory, whose `commondir`
        // leads to the main repository's config.
        let wt = base.join("wt");
        std::fs::create_dir_all(a.join(".git/worktrees/wt")).unwrap();
        std::fs::write(a.join(".git/worktrees/wt/commondir"), "../..\n").unwrap();
        std::fs::create_dir_all(&wt).unwrap();
        std::fs::write(wt.join(".git"), format!("gitdir: {}\n", a.join(".git/worktrees/wt").display())).unwrap();
        assert_eq!(id(&wt), "github.com/org/repo");
        // A submodule: a relative `gitdir`, a git directory of its own.
        let sub = a.join("vendor/lib");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::create_dir_all(a.join(".git/modules/lib")).unwrap();
        std::fs::write(
            a.join(".git/modules/lib/config"),
            "[remote \"origin\"]\nurl = https://github.com/lib/lib.git\n",
        )
        .unwrap();
        std::fs::write(sub.join(".git"), "gitdir: ../../.git/modules/lib\n").unwrap();
        assert_eq!(id(&sub), "github.com/lib/lib");
        // A project path that does not exist is sent as it is.
        assert_eq!(identity("/no/such/dir"), "/no/such/dir");
    }
}
