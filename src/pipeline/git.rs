//! The local git repository as Semaphore would describe it: the
//! `SEMAPHORE_GIT_*` values, the branch/tag a `when` condition sees,
//! `change_in` against local history, and the snapshot `checkout` clones.
//!
//! Every fact comes from running `git` (with the agent's child
//! environment) in the pipeline file's directory; outside a repository
//! the values are empty and `change_in` cannot be decided.

use std::path::{Path, PathBuf};

use super::when::Arg;

/// Why `change_in` cannot be answered or the checkout snapshot cannot be
/// made.
#[derive(Debug)]
pub enum GitError {
    ChangeInNoRepository,
    ChangeInNoPattern,
    /// `git merge-base` found no default branch.
    FindMergeBase {
        default_branch: String,
    },
    /// `git diff --name-only` refused the range.
    DiffRange {
        range: String,
    },
    SnapshotNoRepository,
    SnapshotNoCommit,
    /// git itself cannot be started.
    RunGit {
        error: std::io::Error,
    },
    /// A git command of the snapshot failed; `args` joined, its stderr.
    GitFailed {
        args: String,
        stderr: String,
    },
}

impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitError::ChangeInNoRepository => f.write_str("change_in needs a git repository"),
            GitError::ChangeInNoPattern => f.write_str("change_in needs at least one file pattern"),
            GitError::FindMergeBase { default_branch } => write!(
                f,
                "change_in cannot find the default branch '{default_branch}' (give --base)"
            ),
            GitError::DiffRange { range } => {
                write!(f, "change_in cannot read the commit range {range}")
            }
            GitError::SnapshotNoRepository => {
                f.write_str("the pipeline is not in a git repository")
            }
            GitError::SnapshotNoCommit => f.write_str("the repository has no commit yet"),
            GitError::RunGit { error } => write!(f, "cannot run git: {error}"),
            GitError::GitFailed { args, stderr } => write!(f, "git {args} failed: {stderr}"),
        }
    }
}

impl std::error::Error for GitError {}

/// What the pipeline's repository looks like right now.
#[derive(Debug, Clone, Default)]
pub struct GitInfo {
    /// The work tree's top directory; `None` outside a repository.
    pub top: Option<PathBuf>,
    pub sha: String,
    /// The branch HEAD is on (empty when detached).
    pub branch: String,
    /// A tag pointing at HEAD when HEAD is detached on it.
    pub tag: String,
    pub url: String,
    pub repo_name: String,
    pub repo_slug: String,
    /// `refs/heads/<branch>` or `refs/tags/<tag>`.
    pub git_ref: String,
    pub commit_range: String,
    pub commit_author: String,
    pub committer: String,
    /// The branch `change_in` compares with (`--base` or the repository's).
    pub default_branch: String,
    /// The pipeline file, relative to `top`.
    pub pipeline_file: String,
    /// The pipeline file's directory, relative to `top` ("" at the top).
    pub pipeline_dir: String,
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = crate::child_env::command("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// `owner/name` and `name` from a remote URL (`git@host:o/n.git`,
/// `https://host/o/n`), or `None` when it has no such shape.
fn slug_of(url: &str) -> Option<(String, String)> {
    let trimmed = url.trim_end_matches('/').trim_end_matches(".git");
    let path = match trimmed.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map(|(_, p)| p)?,
        None => trimmed.split_once(':').map(|(_, p)| p).unwrap_or(trimmed),
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [.., owner, name] => Some((format!("{owner}/{name}"), name.to_string())),
        [name] => Some((name.to_string(), name.to_string())),
        [] => None,
    }
}

impl GitInfo {
    /// Reads the repository holding `pipeline_file`; `base` overrides the
    /// default branch.
    pub fn read(pipeline_file: &Path, base: Option<&str>) -> GitInfo {
        let file = std::fs::canonicalize(pipeline_file).unwrap_or(pipeline_file.to_path_buf());
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut info = GitInfo::default();
        let Some(top) = git(&dir, &["rev-parse", "--show-toplevel"]).map(PathBuf::from) else {
            info.repo_name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            info.repo_slug = info.repo_name.clone();
            return info;
        };
        info.sha = git(&top, &["rev-parse", "HEAD"]).unwrap_or_default();
        info.branch = git(&top, &["symbolic-ref", "--short", "-q", "HEAD"]).unwrap_or_default();
        if info.branch.is_empty() {
            info.tag =
                git(&top, &["describe", "--tags", "--exact-match", "HEAD"]).unwrap_or_default();
        }
        info.git_ref = if !info.branch.is_empty() {
            format!("refs/heads/{}", info.branch)
        } else if !info.tag.is_empty() {
            format!("refs/tags/{}", info.tag)
        } else {
            "HEAD".into()
        };
        let top_name = top
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        info.url = git(&top, &["remote", "get-url", "origin"])
            .unwrap_or_else(|| top.display().to_string());
        match git(&top, &["remote", "get-url", "origin"])
            .as_deref()
            .and_then(slug_of)
        {
            Some((slug, name)) => {
                info.repo_slug = slug;
                info.repo_name = name;
            }
            None => {
                info.repo_slug = top_name.clone();
                info.repo_name = top_name;
            }
        }
        info.commit_author = git(&top, &["log", "-1", "--format=%an"]).unwrap_or_default();
        info.committer = git(&top, &["log", "-1", "--format=%cn"]).unwrap_or_default();
        info.default_branch = match base {
            Some(b) => b.to_string(),
            None => default_branch(&top),
        };
        let start = if info.branch == info.default_branch || info.branch.is_empty() {
            git(&top, &["rev-parse", "-q", "--verify", "HEAD^"])
        } else {
            git(&top, &["merge-base", &info.default_branch, "HEAD"])
        };
        info.commit_range = match start {
            Some(start) if start != info.sha => format!("{start}...{}", info.sha),
            _ => String::new(),
        };
        info.pipeline_file = file
            .strip_prefix(std::fs::canonicalize(&top).unwrap_or(top.clone()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        info.pipeline_dir = Path::new(&info.pipeline_file)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        info.top = Some(top);
        info
    }

    /// `branch`, `tag`, or `pull_request` for a `when` condition (a local
    /// run is never a pull request).
    pub fn keyword(&self, name: &str) -> Option<String> {
        match name {
            "branch" => Some(self.branch.clone()),
            "tag" => Some(self.tag.clone()),
            "pull_request" => Some(String::new()),
            _ => None,
        }
    }

    /// The `SEMAPHORE_GIT_*` variables in the order Semaphore's job
    /// request factory writes them.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            ("SEMAPHORE_GIT_URL", self.url.clone()),
            ("SEMAPHORE_GIT_REPO_NAME", self.repo_name.clone()),
            ("SEMAPHORE_GIT_DIR", self.repo_name.clone()),
            ("SEMAPHORE_GIT_SHA", self.sha.clone()),
            ("SEMAPHORE_GIT_REPO_SLUG", self.repo_slug.clone()),
            ("SEMAPHORE_GIT_REF", self.git_ref.clone()),
            ("SEMAPHORE_GIT_COMMIT_RANGE", self.commit_range.clone()),
        ];
        if !self.tag.is_empty() {
            vars.push(("SEMAPHORE_GIT_REF_TYPE", "tag".into()));
            vars.push(("SEMAPHORE_GIT_BRANCH", self.git_ref.clone()));
            vars.push(("SEMAPHORE_GIT_TAG_NAME", self.tag.clone()));
        } else {
            vars.push(("SEMAPHORE_GIT_REF_TYPE", "branch".into()));
            vars.push(("SEMAPHORE_GIT_BRANCH", self.branch.clone()));
            vars.push(("SEMAPHORE_GIT_WORKING_BRANCH", self.branch.clone()));
        }
        vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// `change_in(patterns, options)` against local history: on the
    /// default branch the last commit, elsewhere everything since the
    /// merge base with the default branch; uncommitted changes count too.
    pub fn change_in(&self, args: &[Arg]) -> Result<bool, GitError> {
        let Some(top) = &self.top else {
            return Err(GitError::ChangeInNoRepository);
        };
        let patterns = args.first().map(Arg::strings).unwrap_or_default();
        if patterns.is_empty() {
            return Err(GitError::ChangeInNoPattern);
        }
        let option = |key: &str| match args.get(1) {
            Some(Arg::Map(m)) => m.get(key).cloned(),
            _ => None,
        };
        let on_tags = !matches!(option("on_tags"), Some(Arg::Bool(false)));
        if on_tags && !self.tag.is_empty() {
            return Ok(true);
        }
        let default_branch = match option("default_branch") {
            Some(Arg::Str(b)) => b,
            _ => self.default_branch.clone(),
        };
        let range_option = if self.branch == default_branch {
            option("default_range")
        } else {
            option("branch_range")
        };
        let range = match range_option {
            Some(Arg::Str(r)) => r
                .replace("$SEMAPHORE_GIT_COMMIT_RANGE", &self.commit_range)
                .replace("$SEMAPHORE_MERGE_BASE", &default_branch)
                .replace("$SEMAPHORE_GIT_SHA", &self.sha),
            _ if self.branch == default_branch => {
                match git(top, &["rev-parse", "-q", "--verify", "HEAD^"]) {
                    Some(parent) => format!("{parent}..HEAD"),
                    None => String::new(),
                }
            }
            _ => {
                let base = git(top, &["merge-base", &default_branch, "HEAD"]).ok_or_else(|| {
                    GitError::FindMergeBase {
                        default_branch: default_branch.clone(),
                    }
                })?;
                format!("{base}..HEAD")
            }
        };
        let mut changed: Vec<String> = if range.is_empty() {
            // The first commit: every file in it is new.
            git(top, &["ls-tree", "-r", "--name-only", "HEAD"])
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        } else {
            git(top, &["diff", "--name-only", &range])
                .ok_or_else(|| GitError::DiffRange {
                    range: range.clone(),
                })?
                .lines()
                .map(str::to_string)
                .collect()
        };
        changed.extend(uncommitted(top));
        let track = !matches!(option("pipeline_file"), Some(Arg::Str(s)) if s == "ignore");
        if track && changed.contains(&self.pipeline_file) {
            return Ok(true);
        }
        let excludes = option("exclude").map(|a| a.strings()).unwrap_or_default();
        let resolve = |p: &str| resolve_pattern(p, &self.pipeline_dir);
        let patterns: Vec<String> = patterns.iter().map(|p| resolve(p)).collect();
        let excludes: Vec<String> = excludes.iter().map(|p| resolve(p)).collect();
        Ok(changed.iter().any(|f| {
            patterns.iter().any(|p| path_matches(p, f))
                && !excludes.iter().any(|p| path_matches(p, f))
        }))
    }
}

/// Files changed, staged or untracked in the work tree.
fn uncommitted(top: &Path) -> Vec<String> {
    git(top, &["status", "--porcelain", "--untracked-files=all"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.get(3..))
        .map(|p| match p.split_once(" -> ") {
            Some((_, to)) => to.to_string(),
            None => p.to_string(),
        })
        .collect()
}

/// The default branch: `origin/HEAD`'s target, else `main` or `master`
/// when such a branch exists, else `master` (Semaphore's default).
fn default_branch(top: &Path) -> String {
    if let Some(r) = git(top, &["symbolic-ref", "-q", "refs/remotes/origin/HEAD"]) {
        if let Some(b) = r.strip_prefix("refs/remotes/origin/") {
            return b.to_string();
        }
    }
    for b in ["main", "master"] {
        if git(
            top,
            &["rev-parse", "-q", "--verify", &format!("refs/heads/{b}")],
        )
        .is_some()
        {
            return b.to_string();
        }
    }
    "master".into()
}

/// A `change_in` pattern as a path from the repository's top: `/x` is
/// from the top, anything else from the pipeline file's directory
/// (`../lib` next to `.semaphore/`).
fn resolve_pattern(pattern: &str, pipeline_dir: &str) -> String {
    let joined = match pattern.strip_prefix('/') {
        Some(rest) => rest.to_string(),
        None if pipeline_dir.is_empty() => pattern.to_string(),
        None => format!("{pipeline_dir}/{pattern}"),
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Whether `file` (from the top) is matched by `pattern` (from the top):
/// a plain path matches itself and everything under it; `*` is any run of
/// characters but `/`, `**` any run of directories.
fn path_matches(pattern: &str, file: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    if !pattern.contains('*') && !pattern.contains('?') {
        return file == pattern || file.starts_with(&format!("{pattern}/"));
    }
    let mut re = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                if chars.get(i + 2) == Some(&'/') {
                    re.push_str("(?:.*/)?");
                    i += 3;
                } else {
                    re.push_str(".*");
                    i += 2;
                }
                continue;
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => re.push_str(&regex_lite::escape(&c.to_string())),
        }
        i += 1;
    }
    re.push_str("(?:/.*)?$");
    regex_lite::Regex::new(&re).is_ok_and(|r| r.is_match(file))
}

/// Makes the commit a job's `checkout` goes to: HEAD itself with
/// `head_only`, else a commit on top of HEAD holding the work tree as it
/// is (tracked changes and untracked files that are not ignored), made
/// with a private index so the user's index, work tree and refs are left
/// alone. `Err` says why (not a repository, git failed).
pub fn snapshot(info: &GitInfo, head_only: bool, scratch: &Path) -> Result<String, GitError> {
    let Some(top) = &info.top else {
        return Err(GitError::SnapshotNoRepository);
    };
    if info.sha.is_empty() {
        return Err(GitError::SnapshotNoCommit);
    }
    if head_only || uncommitted(top).is_empty() {
        return Ok(info.sha.clone());
    }
    let index = scratch.join("snapshot-index");
    let run = |args: &[&str]| -> Result<String, GitError> {
        let out = crate::child_env::command("git")
            .arg("-C")
            .arg(top)
            .args(args)
            .env("GIT_INDEX_FILE", &index)
            .env("GIT_AUTHOR_NAME", "semaphore-agent")
            .env("GIT_AUTHOR_EMAIL", "semaphore-agent@localhost")
            .env("GIT_COMMITTER_NAME", "semaphore-agent")
            .env("GIT_COMMITTER_EMAIL", "semaphore-agent@localhost")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|error| GitError::RunGit { error })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(GitError::GitFailed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    };
    run(&["read-tree", "HEAD"])?;
    run(&["add", "-A"])?;
    let tree = run(&["write-tree"])?;
    let commit = run(&[
        "commit-tree",
        &tree,
        "-p",
        "HEAD",
        "-m",
        "semaphore-agent: uncommitted changes",
    ])?;
    let _ = std::fs::remove_file(&index);
    Ok(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_resolve_and_match_like_change_in() {
        assert_eq!(resolve_pattern("/lib", ".semaphore"), "lib");
        assert_eq!(resolve_pattern("../lib", ".semaphore"), "lib");
        assert_eq!(resolve_pattern("x", ""), "x");
        assert!(path_matches("lib", "lib/a/b.rs"));
        assert!(path_matches("lib", "lib"));
        assert!(!path_matches("lib", "library/x"));
        assert!(path_matches("lib/**/*.js", "lib/a/b/c.js"));
        assert!(path_matches("lib/**/*.js", "lib/c.js"));
        assert!(!path_matches("lib/**/*.js", "lib/c.rs"));
        assert!(path_matches("*.md", "README.md"));
        assert!(!path_matches("*.md", "docs/x.txt"));
        assert!(path_matches("", "anything"));
    }

    #[test]
    fn slugs_from_remote_urls() {
        assert_eq!(
            slug_of("git@github.com:acme/app.git"),
            Some(("acme/app".into(), "app".into()))
        );
        assert_eq!(
            slug_of("https://github.com/acme/app"),
            Some(("acme/app".into(), "app".into()))
        );
        assert_eq!(
            slug_of("/srv/git/app.git"),
            Some(("git/app".into(), "app".into()))
        );
    }
}
