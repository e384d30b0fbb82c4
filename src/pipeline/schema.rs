//! Reading a pipeline file against Semaphore's v1.0 schema: every check
//! names the YAML path (`blocks[2].task.jobs[0]`) and what is wrong, and
//! all errors are collected before anything is reported, so one run shows
//! them all. The result is the typed [`Pipeline`] the expansion works on.
//!
//! The checks follow the schema's rules (see `mod.rs` for the list):
//! required keys, no unknown keys, one of `commands`/`commands_file`,
//! `matrix` xor `parallelism`, one of `skip`/`run`, limits with exactly
//! one of `minutes`/`hours`, unique block and job names, dependencies all
//! or none, no unknown dependency and no cycle, and the rules between
//! time limits (job ≤ block ≤ pipeline, one hour by default). Before the
//! checks `${{parameters.NAME}}` is substituted and `task_file`s are read.
//! Things the schema accepts but a local run cannot do (boosters,
//! `filters`) are errors that say so, rather than being silently dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use crate::config::yaml_kind as kind;

/// A `when` condition: a YAML boolean or an expression, parsed once here.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Bool(bool),
    Expr(super::when::Expr),
}

#[derive(Debug, Clone, Default)]
pub struct Agent {
    pub machine_type: String,
    pub os_image: String,
    pub containers: Vec<Container>,
    pub image_pull_secrets: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: String,
    pub entrypoint: String,
    pub user: String,
    pub env_vars: Vec<(String, String)>,
    pub secrets: Vec<String>,
}

/// Commands of the three epilogues, each already read from its file.
#[derive(Debug, Clone, Default)]
pub struct Epilogue {
    pub always: Vec<String>,
    pub on_pass: Vec<String>,
    pub on_fail: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FailFast {
    pub stop: Option<Cond>,
    pub cancel: Option<Cond>,
}

#[derive(Debug, Clone, Default)]
pub struct Job {
    pub name: String,
    pub commands: Vec<String>,
    pub env_vars: Vec<(String, String)>,
    pub parallelism: Option<u32>,
    /// `(env var, values)` in the order written.
    pub matrix: Vec<(String, Vec<String>)>,
    pub execution_time_limit: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Task {
    pub jobs: Vec<Job>,
    pub agent: Option<Agent>,
    pub prologue: Vec<String>,
    pub epilogue: Epilogue,
    pub env_vars: Vec<(String, String)>,
    pub secrets: Vec<String>,
    pub fail_fast: Option<FailFast>,
}

#[derive(Debug, Clone, Default)]
pub struct Block {
    pub name: String,
    /// As written; `None` when the block has no `dependencies` key.
    pub dependencies: Option<Vec<String>>,
    pub task: Task,
    pub skip: Option<Cond>,
    pub run: Option<Cond>,
    pub execution_time_limit: Option<u64>,
}

/// The `global_job_config` section.
#[derive(Debug, Clone, Default)]
pub struct Global {
    pub prologue: Vec<String>,
    pub epilogue: Epilogue,
    pub env_vars: Vec<(String, String)>,
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Promotion {
    pub name: String,
    pub pipeline_file: String,
    pub auto: bool,
}

/// A valid pipeline, commands files read.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    pub name: String,
    pub agent: Agent,
    pub blocks: Vec<Block>,
    pub global: Global,
    /// Minutes.
    pub execution_time_limit: Option<u64>,
    pub fail_fast: Option<FailFast>,
    pub auto_cancel: bool,
    /// Queue names (or `processing` modes) as written.
    pub queue: Vec<String>,
    pub promotions: Vec<Promotion>,
    pub after_pipeline: Option<Task>,
    /// `${{parameters.NAME}}` names no `--env` gave (each replaced by its
    /// name, as Semaphore does).
    pub unset_parameters: Vec<String>,
}

impl Pipeline {
    /// Each block's dependencies, explicit or implicit (no block has any:
    /// each depends on the one before it).
    pub fn dependencies(&self) -> Vec<Vec<String>> {
        let implicit = self.blocks.iter().all(|b| b.dependencies.is_none());
        self.blocks
            .iter()
            .enumerate()
            .map(|(i, b)| match (&b.dependencies, implicit, i) {
                (Some(deps), _, _) => deps.clone(),
                (None, true, 0) => Vec::new(),
                (None, true, i) => vec![self.blocks[i - 1].name.clone()],
                (None, false, _) => Vec::new(),
            })
            .collect()
    }
}

/// Whether a YAML text is a pipeline (a mapping with `version` and
/// `blocks`) rather than a job request.
pub fn looks_like_pipeline(text: &str) -> bool {
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => m.contains_key("version") && m.contains_key("blocks"),
        _ => false,
    }
}

/// Where a pipeline's files come from and what its templates are given.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The repository's root: a `commands_file` or `task_file` path that
    /// starts with `/` is read from here, as Semaphore reads it from the
    /// repository's root (others are relative to the pipeline file).
    pub root: &'a Path,
    /// The values of `${{parameters.NAME}}` (`--env NAME=VALUE`).
    pub parameters: &'a [(String, String)],
}

/// Parses and checks `text`, the pipeline file at `path`, its directory
/// taken as the repository's root and no parameters (see [`parse_in`]).
pub fn parse(text: &str, path: &Path) -> Result<Pipeline, Vec<String>> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_in(
        text,
        path,
        Source {
            root: &dir,
            parameters: &[],
        },
    )
}

/// Parses and checks `text`, the pipeline file at `path`: parameters
/// substituted first (every string outside `commands`, as Semaphore's
/// pipeline compiler does), `task_file` and `commands_file` read, then
/// every check. `Err` holds every error, one line each, `path: what is
/// wrong`.
pub fn parse_in(text: &str, path: &Path, source: Source<'_>) -> Result<Pipeline, Vec<String>> {
    let mut value: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(vec![format!("not valid YAML: {e}")]),
    };
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut c = Checker {
        errors: Vec::new(),
        dir,
        root: source.root.to_path_buf(),
    };
    let mut templates = Templates {
        parameters: source.parameters,
        unset: Vec::new(),
    };
    templates.walk(&mut value, "", &mut c);
    let mut pipeline = c.pipeline(&value);
    pipeline.unset_parameters = templates.unset;
    if c.errors.is_empty() {
        Ok(pipeline)
    } else {
        Err(c.errors)
    }
}

/// `${{parameters.NAME}}` substitution.
struct Templates<'a> {
    parameters: &'a [(String, String)],
    /// Names used but not given, in order of first use.
    unset: Vec<String>,
}

impl Templates<'_> {
    /// Every string under `v` except those under a `commands` key.
    fn walk(&mut self, v: &mut Value, path: &str, c: &mut Checker) {
        match v {
            Value::String(s) => {
                if let Some(new) = self.substitute(s, path, c) {
                    *s = new;
                }
            }
            Value::Sequence(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.walk(item, &format!("{path}[{i}]"), c);
                }
            }
            Value::Mapping(m) => {
                for (key, item) in m.iter_mut() {
                    let key = key.as_str().unwrap_or_default();
                    if key != "commands" {
                        self.walk(item, &at(path, key), c);
                    }
                }
            }
            _ => {}
        }
    }

    /// `text` with its template expressions replaced, or `None` when it
    /// has none. Only `${{parameters.NAME}}` (and `%{{...}}` of the same)
    /// is understood; an unset parameter becomes its name, as Semaphore's
    /// compiler does when the variable is missing.
    fn substitute(&mut self, text: &str, path: &str, c: &mut Checker) -> Option<String> {
        let mut out = String::new();
        let mut rest = text;
        let mut found = false;
        while let Some(at_open) = rest.find("{{") {
            let sigil = rest[..at_open].chars().next_back();
            let inner_start = at_open + 2;
            let close = rest[inner_start..].find('}').map(|i| inner_start + i);
            let expr = match (sigil, close) {
                (Some(sigil @ ('$' | '%')), Some(close))
                    if rest[close..].starts_with("}}")
                        && close > inner_start
                        && !rest[inner_start..close].contains(['(', ')']) =>
                {
                    Some((sigil, close))
                }
                _ => None,
            };
            let Some((sigil, close)) = expr else {
                out.push_str(&rest[..inner_start]);
                rest = &rest[inner_start..];
                continue;
            };
            found = true;
            out.push_str(&rest[..at_open - 1]);
            let inner = rest[inner_start..close].trim();
            let whole = &rest[at_open - 1..close + 2];
            match parameter_name(inner) {
                Some(name) => {
                    let value = match self.parameters.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => v.clone(),
                        None => {
                            if !self.unset.iter().any(|u| u == name) {
                                self.unset.push(name.to_string());
                            }
                            name.to_string()
                        }
                    };
                    let standalone = text.trim() == whole;
                    if sigil == '%' && !standalone {
                        out.push_str(&serde_json::Value::String(value).to_string());
                    } else {
                        out.push_str(&value);
                    }
                }
                None => c.err(
                    path,
                    format!(
                        "the template expression {whole:?} needs Semaphore's pipeline compiler; \
                         a local run substitutes only ${{{{parameters.NAME}}}}"
                    ),
                ),
            }
            rest = &rest[close + 2..];
        }
        out.push_str(rest);
        // The compiler trims a value that held an expression.
        found.then(|| out.trim().to_string())
    }
}

/// `NAME` of `parameters.NAME` (`[A-Za-z0-9_]+`).
fn parameter_name(inner: &str) -> Option<&str> {
    let name = inner.strip_prefix("parameters.")?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(name)
}

struct Checker {
    errors: Vec<String>,
    /// The pipeline file's directory: `commands_file` and `task_file` are
    /// relative to it.
    dir: PathBuf,
    /// The repository's root, for paths that start with `/`.
    root: PathBuf,
}

/// `base.key`, or `key` at the root.
fn at(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

impl Checker {
    /// A `commands_file` or `task_file` path: from the repository's root
    /// when it starts with `/`, else from the pipeline file's directory.
    fn resolve(&self, file: &str) -> PathBuf {
        let file = file.trim();
        match file.strip_prefix('/') {
            Some(in_repo) => self.root.join(in_repo.trim_start_matches('/')),
            None => self.dir.join(file),
        }
    }

    /// The task in the file a `task_file` names, checked like an inline
    /// task (its errors' paths start `<path>(<file>)`).
    fn task_file(&mut self, v: &Value, path: &str) -> Task {
        let Some(file) = self.non_empty(v, path) else {
            return Task::default();
        };
        let full = self.resolve(&file);
        let text = match std::fs::read_to_string(&full) {
            Ok(text) => text,
            Err(e) => {
                self.err(path, format!("cannot read {}: {e}", full.display()));
                return Task::default();
            }
        };
        match serde_yaml_ng::from_str::<Value>(&text) {
            Ok(task) => self.task(&task, &format!("{path}({file})")),
            Err(e) => {
                self.err(path, format!("{} is not valid YAML: {e}", full.display()));
                Task::default()
            }
        }
    }

    fn err(&mut self, path: &str, message: impl std::fmt::Display) {
        let path = if path.is_empty() { "(top level)" } else { path };
        self.errors.push(format!("{path}: {message}"));
    }

    /// The mapping at `path`, with only `allowed` keys (others are errors).
    fn mapping<'v>(&mut self, v: &'v Value, path: &str, allowed: &[&str]) -> Option<&'v Mapping> {
        let Value::Mapping(m) = v else {
            self.err(path, format!("must be a mapping, not {}", kind(v)));
            return None;
        };
        for key in m.keys() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => self.err(
                    &at(path, k),
                    format!("unknown key (allowed here: {})", allowed.join(", ")),
                ),
                None => self.err(path, "every key must be a string"),
            }
        }
        Some(m)
    }

    fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            // YAML reads `version: 1.0` or `value: 3` as numbers; Semaphore
            // takes their text.
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.err(path, format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    fn non_empty(&mut self, v: &Value, path: &str) -> Option<String> {
        let s = self.string(v, path)?;
        if s.is_empty() {
            self.err(path, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn strings(&mut self, v: &Value, path: &str) -> Vec<String> {
        let Value::Sequence(items) = v else {
            self.err(path, format!("must be a list, not {}", kind(v)));
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.string(item, &format!("{path}[{i}]")))
            .collect()
    }

    fn list<'v>(&mut self, v: &'v Value, path: &str) -> &'v [Value] {
        match v {
            Value::Sequence(items) => items,
            other => {
                self.err(path, format!("must be a list, not {}", kind(other)));
                &[]
            }
        }
    }

    fn pipeline(&mut self, v: &Value) -> Pipeline {
        let allowed = [
            "version",
            "name",
            "agent",
            "blocks",
            "after_pipeline",
            "promotions",
            "execution_time_limit",
            "global_job_config",
            "fail_fast",
            "auto_cancel",
            "queue",
            "partial_rerun",
        ];
        let mut p = Pipeline::default();
        let Some(m) = self.mapping(v, "", &allowed) else {
            return p;
        };
        match m.get("version") {
            None => self.err("version", "required (\"v1.0\")"),
            Some(v) => {
                if let Some(s) = self.string(v, "version") {
                    if s != "v1.0" {
                        self.err("version", format!("must be \"v1.0\", not {s:?}"));
                    }
                }
            }
        }
        if let Some(v) = m.get("name") {
            p.name = self.string(v, "name").unwrap_or_default();
        }
        match m.get("agent") {
            Some(v) => p.agent = self.agent(v, "agent").unwrap_or_default(),
            None => self.err("agent", "required (agent.machine.type at least)"),
        }
        if let Some(v) = m.get("global_job_config") {
            p.global = self.global(v, "global_job_config");
        }
        if let Some(v) = m.get("execution_time_limit") {
            p.execution_time_limit = self.time_limit(v, "execution_time_limit");
        }
        if let Some(v) = m.get("fail_fast") {
            p.fail_fast = self.fail_fast(v, "fail_fast");
        }
        if let Some(v) = m.get("auto_cancel") {
            if let Some(am) = self.mapping(v, "auto_cancel", &["queued", "running"]) {
                if am.is_empty() {
                    self.err("auto_cancel", "needs queued or running");
                }
                for key in ["queued", "running"] {
                    if let Some(c) = am.get(key) {
                        self.when_condition(c, &at("auto_cancel", key));
                    }
                }
                p.auto_cancel = true;
            }
        }
        if let Some(v) = m.get("queue") {
            p.queue = self.queue(v, "queue");
        }
        if let Some(v) = m.get("partial_rerun") {
            self.partial_rerun(v, "partial_rerun");
        }
        if let Some(v) = m.get("promotions") {
            p.promotions = self.promotions(v, "promotions");
        }
        if let Some(v) = m.get("after_pipeline") {
            if let Some(am) = self.mapping(v, "after_pipeline", &["task", "task_file"]) {
                match (am.get("task"), am.get("task_file")) {
                    (Some(t), None) => p.after_pipeline = Some(self.task(t, "after_pipeline.task")),
                    (None, Some(f)) => {
                        p.after_pipeline = Some(self.task_file(f, "after_pipeline.task_file"))
                    }
                    _ => self.err("after_pipeline", "needs exactly one of task or task_file"),
                }
            }
        }
        match m.get("blocks") {
            None => self.err("blocks", "required (a list of at least one block)"),
            Some(v) => {
                let items = self.list(v, "blocks");
                if items.is_empty() && matches!(v, Value::Sequence(_)) {
                    self.err("blocks", "needs at least one block");
                }
                if items.len() > 300 {
                    self.err("blocks", format!("at most 300 blocks, not {}", items.len()));
                }
                let mut nameless = 0;
                for (i, b) in items.iter().enumerate() {
                    let mut block = self.block(b, &format!("blocks[{i}]"));
                    if block.name.is_empty() {
                        nameless += 1;
                        block.name = format!("Nameless block {nameless}");
                    }
                    p.blocks.push(block);
                }
            }
        }
        self.check_dependencies(&p);
        self.check_time_limits(&p);
        p
    }

    /// Semaphore's rules between limits: a job's may not exceed its
    /// block's, and neither a block's nor a job's may exceed the
    /// pipeline's (one hour when the pipeline sets none).
    fn check_time_limits(&mut self, p: &Pipeline) {
        let (pipeline, whose) = match p.execution_time_limit {
            Some(m) => (m, "the pipeline's execution_time_limit"),
            None => (
                DEFAULT_PIPELINE_LIMIT,
                "the pipeline's default execution_time_limit",
            ),
        };
        for (i, b) in p.blocks.iter().enumerate() {
            let bp = format!("blocks[{i}]");
            if let Some(block) = b.execution_time_limit {
                if block > pipeline {
                    self.err(
                        &at(&bp, "execution_time_limit"),
                        format!(
                            "{} is longer than {whose} of {}; Semaphore refuses it (the pipeline \
                             would stop the block first)",
                            duration(block),
                            duration(pipeline)
                        ),
                    );
                }
            }
            for (j, job) in b.task.jobs.iter().enumerate() {
                let Some(limit) = job.execution_time_limit else {
                    continue;
                };
                let jp = format!("{bp}.task.jobs[{j}].execution_time_limit");
                match b.execution_time_limit {
                    Some(block) if limit > block => self.err(
                        &jp,
                        format!(
                            "{} is longer than the block's execution_time_limit of {}; Semaphore \
                             refuses it (the block would stop the job first)",
                            duration(limit),
                            duration(block)
                        ),
                    ),
                    _ if limit > pipeline => self.err(
                        &jp,
                        format!(
                            "{} is longer than {whose} of {}; Semaphore refuses it (the pipeline \
                             would stop the job first)",
                            duration(limit),
                            duration(pipeline)
                        ),
                    ),
                    _ => {}
                }
            }
        }
    }

    fn check_dependencies(&mut self, p: &Pipeline) {
        let mut seen = BTreeSet::new();
        for (i, b) in p.blocks.iter().enumerate() {
            if !seen.insert(b.name.as_str()) {
                self.err(
                    &format!("blocks[{i}].name"),
                    format!("there is another block named {:?}", b.name),
                );
            }
        }
        let with = p.blocks.iter().filter(|b| b.dependencies.is_some()).count();
        if with != 0 && with != p.blocks.len() {
            for (i, b) in p.blocks.iter().enumerate() {
                if b.dependencies.is_none() {
                    self.err(
                        &format!("blocks[{i}]"),
                        "has no dependencies while other blocks have them: give every block \
                         dependencies (an empty list for none) or none at all",
                    );
                }
            }
            return;
        }
        let names: BTreeMap<&str, usize> = p
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .collect();
        let mut graph: Vec<Vec<usize>> = vec![Vec::new(); p.blocks.len()];
        for (i, b) in p.blocks.iter().enumerate() {
            for (j, dep) in b.dependencies.iter().flatten().enumerate() {
                match names.get(dep.as_str()) {
                    Some(&d) => graph[i].push(d),
                    None => self.err(
                        &format!("blocks[{i}].dependencies[{j}]"),
                        format!("no block is named {dep:?}"),
                    ),
                }
            }
        }
        if let Some(cycle) = find_cycle(&graph) {
            let path: Vec<String> = cycle
                .iter()
                .map(|&i| format!("{:?}", p.blocks[i].name))
                .collect();
            self.err(
                &format!("blocks[{}].dependencies", cycle[0]),
                format!("the dependencies form a cycle: {}", path.join(" → ")),
            );
        }
    }

    fn agent(&mut self, v: &Value, path: &str) -> Option<Agent> {
        let m = self.mapping(v, path, &["machine", "containers", "image_pull_secrets"])?;
        let mut agent = Agent::default();
        match m.get("machine") {
            None => self.err(&at(path, "machine"), "required (with a type)"),
            Some(mv) => {
                let mp = at(path, "machine");
                if let Some(mm) = self.mapping(mv, &mp, &["type", "os_image"]) {
                    match mm.get("type") {
                        Some(t) => {
                            agent.machine_type =
                                self.non_empty(t, &at(&mp, "type")).unwrap_or_default()
                        }
                        None => self.err(&at(&mp, "type"), "required"),
                    }
                    if let Some(o) = mm.get("os_image") {
                        agent.os_image = self.string(o, &at(&mp, "os_image")).unwrap_or_default();
                    }
                }
            }
        }
        if let Some(cv) = m.get("containers") {
            let cp = at(path, "containers");
            for (i, c) in self.list(cv, &cp).iter().enumerate() {
                if let Some(c) = self.container(c, &format!("{cp}[{i}]")) {
                    agent.containers.push(c);
                }
            }
        }
        if let Some(sv) = m.get("image_pull_secrets") {
            agent.image_pull_secrets = self.secrets(sv, &at(path, "image_pull_secrets"));
        }
        Some(agent)
    }

    fn container(&mut self, v: &Value, path: &str) -> Option<Container> {
        let allowed = [
            "name",
            "image",
            "command",
            "entrypoint",
            "user",
            "env_vars",
            "secrets",
        ];
        let m = self.mapping(v, path, &allowed)?;
        let mut c = Container::default();
        for (key, field) in [
            ("name", &mut c.name),
            ("image", &mut c.image),
            ("command", &mut c.command),
            ("entrypoint", &mut c.entrypoint),
            ("user", &mut c.user),
        ] {
            match m.get(key) {
                Some(v) => *field = self.string(v, &at(path, key)).unwrap_or_default(),
                None if key == "name" || key == "image" => self.err(&at(path, key), "required"),
                None => {}
            }
        }
        if let Some(v) = m.get("env_vars") {
            c.env_vars = self.env_vars(v, &at(path, "env_vars"));
        }
        if let Some(v) = m.get("secrets") {
            c.secrets = self.secrets(v, &at(path, "secrets"));
        }
        Some(c)
    }

    fn global(&mut self, v: &Value, path: &str) -> Global {
        let allowed = ["prologue", "secrets", "env_vars", "epilogue", "priority"];
        let mut g = Global::default();
        let Some(m) = self.mapping(v, path, &allowed) else {
            return g;
        };
        if m.is_empty() {
            self.err(
                path,
                format!("needs at least one of {}", allowed.join(", ")),
            );
        }
        if let Some(v) = m.get("prologue") {
            g.prologue = self.cmd_type(v, &at(path, "prologue"));
        }
        if let Some(v) = m.get("epilogue") {
            g.epilogue = self.epilogue(v, &at(path, "epilogue"));
        }
        if let Some(v) = m.get("env_vars") {
            g.env_vars = self.env_vars(v, &at(path, "env_vars"));
        }
        if let Some(v) = m.get("secrets") {
            g.secrets = self.secrets(v, &at(path, "secrets"));
        }
        if let Some(v) = m.get("priority") {
            self.priority(v, &at(path, "priority"));
        }
        g
    }

    fn block(&mut self, v: &Value, path: &str) -> Block {
        let allowed = [
            "name",
            "dependencies",
            "execution_time_limit",
            "filters",
            "skip",
            "run",
            "task",
            "task_file",
            "partial_rerun",
        ];
        let mut b = Block::default();
        let Some(m) = self.mapping(v, path, &allowed) else {
            return b;
        };
        if let Some(v) = m.get("name") {
            b.name = self.non_empty(v, &at(path, "name")).unwrap_or_default();
        }
        if let Some(v) = m.get("dependencies") {
            b.dependencies = Some(self.strings(v, &at(path, "dependencies")));
        }
        if let Some(v) = m.get("execution_time_limit") {
            b.execution_time_limit = self.time_limit(v, &at(path, "execution_time_limit"));
        }
        if m.contains_key("filters") {
            self.err(
                &at(path, "filters"),
                "filters are not supported by a local run (use skip or run)",
            );
        }
        if m.contains_key("skip") && m.contains_key("run") {
            self.err(path, "has both skip and run; use one");
        }
        if let Some(v) = m.get("skip") {
            b.skip = self.when_condition(v, &at(path, "skip"));
        }
        if let Some(v) = m.get("run") {
            b.run = self.when_condition(v, &at(path, "run"));
        }
        if let Some(v) = m.get("partial_rerun") {
            self.partial_rerun(v, &at(path, "partial_rerun"));
        }
        match (m.get("task"), m.get("task_file")) {
            (Some(t), None) => b.task = self.task(t, &at(path, "task")),
            (None, Some(f)) => b.task = self.task_file(f, &at(path, "task_file")),
            (Some(_), Some(_)) => self.err(path, "has both task and task_file; use one"),
            (None, None) => self.err(&at(path, "task"), "required (with jobs)"),
        }
        b
    }

    fn task(&mut self, v: &Value, path: &str) -> Task {
        let allowed = [
            "jobs",
            "agent",
            "boosters",
            "prologue",
            "secrets",
            "env_vars",
            "epilogue",
            "fail_fast",
        ];
        let mut t = Task::default();
        let Some(m) = self.mapping(v, path, &allowed) else {
            return t;
        };
        if m.contains_key("boosters") {
            self.err(
                &at(path, "boosters"),
                "boosters are not supported by a local run (use parallelism)",
            );
        }
        match m.get("jobs") {
            None => self.err(&at(path, "jobs"), "required (a list of at least one job)"),
            Some(jv) => {
                let jp = at(path, "jobs");
                let items = self.list(jv, &jp);
                if items.is_empty() && matches!(jv, Value::Sequence(_)) {
                    self.err(&jp, "needs at least one job");
                }
                if items.len() > 50 {
                    self.err(&jp, format!("at most 50 jobs, not {}", items.len()));
                }
                let mut nameless = 0;
                let mut names = BTreeSet::new();
                for (i, j) in items.iter().enumerate() {
                    let jpath = format!("{jp}[{i}]");
                    let mut job = self.job(j, &jpath);
                    if job.name.is_empty() {
                        nameless += 1;
                        job.name = format!("Nameless {nameless}");
                    } else if !names.insert(job.name.clone()) {
                        self.err(
                            &at(&jpath, "name"),
                            format!("there is another job named {:?} in this block", job.name),
                        );
                    }
                    t.jobs.push(job);
                }
            }
        }
        if let Some(v) = m.get("agent") {
            t.agent = self.agent(v, &at(path, "agent"));
        }
        if let Some(v) = m.get("prologue") {
            t.prologue = self.cmd_type(v, &at(path, "prologue"));
        }
        if let Some(v) = m.get("epilogue") {
            t.epilogue = self.epilogue(v, &at(path, "epilogue"));
        }
        if let Some(v) = m.get("env_vars") {
            t.env_vars = self.env_vars(v, &at(path, "env_vars"));
        }
        if let Some(v) = m.get("secrets") {
            t.secrets = self.secrets(v, &at(path, "secrets"));
        }
        if let Some(v) = m.get("fail_fast") {
            t.fail_fast = self.fail_fast(v, &at(path, "fail_fast"));
        }
        t
    }

    fn job(&mut self, v: &Value, path: &str) -> Job {
        let allowed = [
            "name",
            "commands",
            "commands_file",
            "priority",
            "parallelism",
            "matrix",
            "env_vars",
            "execution_time_limit",
        ];
        let mut j = Job::default();
        let Some(m) = self.mapping(v, path, &allowed) else {
            return j;
        };
        if let Some(v) = m.get("name") {
            j.name = self.non_empty(v, &at(path, "name")).unwrap_or_default();
        }
        j.commands = self.commands_of(m, path);
        if let Some(v) = m.get("priority") {
            self.priority(v, &at(path, "priority"));
        }
        if let Some(v) = m.get("env_vars") {
            j.env_vars = self.env_vars(v, &at(path, "env_vars"));
        }
        if let Some(v) = m.get("execution_time_limit") {
            j.execution_time_limit = self.time_limit(v, &at(path, "execution_time_limit"));
        }
        if m.contains_key("matrix") && m.contains_key("parallelism") {
            self.err(path, "has both matrix and parallelism; use one");
        }
        if let Some(v) = m.get("parallelism") {
            let pp = at(path, "parallelism");
            let n = match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            match n {
                Some(n @ 1..=50) => j.parallelism = Some(n as u32),
                _ => self.err(
                    &pp,
                    format!("must be a whole number from 1 to 50, not {}", show(v)),
                ),
            }
        }
        if let Some(v) = m.get("matrix") {
            let mp = at(path, "matrix");
            for (i, axis) in self.list(v, &mp).iter().enumerate() {
                let ap = format!("{mp}[{i}]");
                let Some(am) = self.mapping(axis, &ap, &["env_var", "values"]) else {
                    continue;
                };
                let name = match am.get("env_var") {
                    Some(n) => self.non_empty(n, &at(&ap, "env_var")),
                    None => {
                        self.err(&at(&ap, "env_var"), "required");
                        None
                    }
                };
                let values = match am.get("values") {
                    Some(Value::Sequence(_)) => {
                        let vals = self.strings(&am["values"], &at(&ap, "values"));
                        if vals.is_empty() {
                            self.err(&at(&ap, "values"), "needs at least one value");
                        }
                        vals
                    }
                    Some(Value::String(_)) => {
                        self.err(
                            &at(&ap, "values"),
                            "a values expression (a string) needs parameters, which a local \
                             run does not have; give a list",
                        );
                        Vec::new()
                    }
                    Some(other) => {
                        self.err(
                            &at(&ap, "values"),
                            format!("must be a list, not {}", kind(other)),
                        );
                        Vec::new()
                    }
                    None => {
                        self.err(&at(&ap, "values"), "required");
                        Vec::new()
                    }
                };
                if let Some(name) = name {
                    j.matrix.push((name, values));
                }
            }
        }
        j
    }

    /// `commands` or `commands_file` of a job or a `cmd_type`, exactly one.
    fn commands_of(&mut self, m: &Mapping, path: &str) -> Vec<String> {
        match (m.get("commands"), m.get("commands_file")) {
            (Some(c), None) => self.strings(c, &at(path, "commands")),
            (None, Some(f)) => {
                let fp = at(path, "commands_file");
                let Some(file) = self.non_empty(f, &fp) else {
                    return Vec::new();
                };
                let full = self.resolve(&file);
                match std::fs::read_to_string(&full) {
                    // Every line is a command as written, a blank one too
                    // (an empty command), as Semaphore's compiler reads it.
                    Ok(text) if !text.is_empty() => text.lines().map(str::to_string).collect(),
                    Ok(_) => {
                        self.err(&fp, format!("{} is empty", full.display()));
                        Vec::new()
                    }
                    Err(e) => {
                        self.err(&fp, format!("cannot read {}: {e}", full.display()));
                        Vec::new()
                    }
                }
            }
            (Some(_), Some(_)) => {
                self.err(path, "has both commands and commands_file; use one");
                Vec::new()
            }
            (None, None) => {
                self.err(path, "needs commands or commands_file");
                Vec::new()
            }
        }
    }

    fn cmd_type(&mut self, v: &Value, path: &str) -> Vec<String> {
        match self.mapping(v, path, &["commands", "commands_file"]) {
            Some(m) => self.commands_of(m, path),
            None => Vec::new(),
        }
    }

    /// `{commands: ...}` (the old form, which is `always`) or any of
    /// `always`, `on_pass`, `on_fail`.
    fn epilogue(&mut self, v: &Value, path: &str) -> Epilogue {
        let mut e = Epilogue::default();
        let Value::Mapping(m) = v else {
            self.err(path, format!("must be a mapping, not {}", kind(v)));
            return e;
        };
        if m.contains_key("commands") || m.contains_key("commands_file") {
            e.always = self.cmd_type(v, path);
            return e;
        }
        let Some(m) = self.mapping(v, path, &["always", "on_pass", "on_fail"]) else {
            return e;
        };
        if m.is_empty() {
            self.err(path, "needs always, on_pass or on_fail (or commands)");
        }
        if let Some(v) = m.get("always") {
            e.always = self.cmd_type(v, &at(path, "always"));
        }
        if let Some(v) = m.get("on_pass") {
            e.on_pass = self.cmd_type(v, &at(path, "on_pass"));
        }
        if let Some(v) = m.get("on_fail") {
            e.on_fail = self.cmd_type(v, &at(path, "on_fail"));
        }
        e
    }

    fn env_vars(&mut self, v: &Value, path: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let items = self.list(v, path);
        if items.len() > 10000 {
            self.err(path, "at most 10000 env vars");
        }
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let Some(m) = self.mapping(item, &ip, &["name", "value"]) else {
                continue;
            };
            let name = match m.get("name") {
                Some(n) => self.string(n, &at(&ip, "name")),
                None => {
                    self.err(&at(&ip, "name"), "required");
                    None
                }
            };
            let value = match m.get("value") {
                Some(v) => self.string(v, &at(&ip, "value")),
                None => {
                    self.err(&at(&ip, "value"), "required (\"\" for empty)");
                    None
                }
            };
            if let Some(name) = &name {
                if !crate::request::is_identifier(name) {
                    self.err(
                        &at(&ip, "name"),
                        format!("{name:?} is not a valid environment variable name"),
                    );
                }
            }
            if let (Some(name), Some(value)) = (name, value) {
                out.push((name, value));
            }
        }
        out
    }

    fn secrets(&mut self, v: &Value, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, item) in self.list(v, path).iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let Some(m) = self.mapping(item, &ip, &["name", "env_var_names", "config_file_paths"])
            else {
                continue;
            };
            match m.get("name") {
                Some(n) => {
                    if let Some(n) = self.non_empty(n, &at(&ip, "name")) {
                        out.push(n);
                    }
                }
                None => self.err(&at(&ip, "name"), "required"),
            }
        }
        out
    }

    fn time_limit(&mut self, v: &Value, path: &str) -> Option<u64> {
        let m = self.mapping(v, path, &["minutes", "hours"])?;
        // Semaphore's limits: at most 24 hours, or 1440 minutes.
        let number = |key: &str, c: &mut Checker| -> Option<u64> {
            let v = m.get(key)?;
            let max = if key == "hours" { 24 } else { 1440 };
            match v.as_u64() {
                Some(n) if (1..=max).contains(&n) => Some(n),
                _ => {
                    c.err(
                        &at(path, key),
                        format!("must be a whole number from 1 to {max}, not {}", show(v)),
                    );
                    None
                }
            }
        };
        match (number("minutes", self), number("hours", self)) {
            (Some(m), None) => Some(m),
            (None, Some(h)) => Some(h * 60),
            (Some(_), Some(_)) => {
                self.err(path, "has both minutes and hours; use one");
                None
            }
            (None, None) => {
                if !m.contains_key("minutes") && !m.contains_key("hours") {
                    self.err(path, "needs minutes or hours");
                }
                None
            }
        }
    }

    fn when_condition(&mut self, v: &Value, path: &str) -> Option<Cond> {
        let m = self.mapping(v, path, &["when"])?;
        self.when_value(m.get("when"), &at(path, "when"))
    }

    /// A `when:` value: a boolean or a condition that parses.
    fn when_value(&mut self, v: Option<&Value>, wp: &str) -> Option<Cond> {
        let cond = match v {
            None => {
                self.err(wp, "required");
                return None;
            }
            Some(Value::Bool(b)) => Cond::Bool(*b),
            Some(Value::String(text)) if !text.trim().is_empty() => {
                match super::when::parse(text) {
                    Ok(expr) => Cond::Expr(expr),
                    Err(e) => {
                        self.err(wp, format!("{e} in {text:?}"));
                        return None;
                    }
                }
            }
            Some(other) => {
                self.err(
                    wp,
                    format!("must be true, false or a condition, not {}", show(other)),
                );
                return None;
            }
        };
        Some(cond)
    }

    fn fail_fast(&mut self, v: &Value, path: &str) -> Option<FailFast> {
        let m = self.mapping(v, path, &["stop", "cancel"])?;
        if m.is_empty() {
            self.err(path, "needs stop or cancel");
        }
        let mut f = FailFast::default();
        if let Some(v) = m.get("stop") {
            f.stop = self.when_condition(v, &at(path, "stop"));
        }
        if let Some(v) = m.get("cancel") {
            f.cancel = self.when_condition(v, &at(path, "cancel"));
        }
        Some(f)
    }

    fn priority(&mut self, v: &Value, path: &str) {
        for (i, item) in self.list(v, path).iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let Some(m) = self.mapping(item, &ip, &["value", "when"]) else {
                continue;
            };
            match m.get("value").map(|v| (v, v.as_u64())) {
                Some((_, Some(0..=100))) => {}
                Some((v, _)) => self.err(
                    &at(&ip, "value"),
                    format!("must be a whole number from 0 to 100, not {}", show(v)),
                ),
                None => self.err(&at(&ip, "value"), "required"),
            }
            self.when_value(m.get("when"), &at(&ip, "when"));
        }
    }

    fn partial_rerun(&mut self, v: &Value, path: &str) {
        if let Some(s) = self.string(v, path) {
            if s != "jobs" && s != "block" {
                self.err(path, format!("must be jobs or block, not {s:?}"));
            }
        }
    }

    fn queue(&mut self, v: &Value, path: &str) -> Vec<String> {
        let mut names = Vec::new();
        let single = [v.clone()];
        let (items, list) = match v {
            Value::Sequence(items) => (items.as_slice(), true),
            _ => (&single[..], false),
        };
        if list && items.is_empty() {
            self.err(path, "needs at least one queue");
        }
        for (i, item) in items.iter().enumerate() {
            let ip = if list {
                format!("{path}[{i}]")
            } else {
                path.to_string()
            };
            let Some(m) = self.mapping(item, &ip, &["name", "scope", "processing", "when"]) else {
                continue;
            };
            if !m.contains_key("name") && !m.contains_key("processing") {
                self.err(&ip, "needs name or processing");
            }
            if let Some(s) = m.get("scope") {
                if let Some(s) = self.string(s, &at(&ip, "scope")) {
                    if s != "project" && s != "organization" {
                        self.err(
                            &at(&ip, "scope"),
                            format!("must be project or organization, not {s:?}"),
                        );
                    }
                }
            }
            if let Some(s) = m.get("processing") {
                if let Some(s) = self.string(s, &at(&ip, "processing")) {
                    if s != "serialized" && s != "parallel" {
                        self.err(
                            &at(&ip, "processing"),
                            format!("must be serialized or parallel, not {s:?}"),
                        );
                    }
                }
            }
            if m.contains_key("when") {
                self.when_value(m.get("when"), &at(&ip, "when"));
            }
            let label = m
                .get("name")
                .and_then(Value::as_str)
                .or_else(|| m.get("processing").and_then(Value::as_str))
                .unwrap_or_default();
            names.push(label.to_string());
        }
        names
    }

    fn promotions(&mut self, v: &Value, path: &str) -> Vec<Promotion> {
        let mut out = Vec::new();
        let items = self.list(v, path);
        if items.is_empty() && matches!(v, Value::Sequence(_)) {
            self.err(path, "needs at least one promotion");
        }
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let allowed = [
                "name",
                "pipeline_file",
                "deployment_target",
                "auto_promote_on",
                "auto_promote",
                "parameters",
            ];
            let Some(m) = self.mapping(item, &ip, &allowed) else {
                continue;
            };
            let mut p = Promotion::default();
            match m.get("name") {
                Some(n) => p.name = self.non_empty(n, &at(&ip, "name")).unwrap_or_default(),
                None => self.err(&at(&ip, "name"), "required"),
            }
            match m.get("pipeline_file") {
                Some(f) => {
                    p.pipeline_file = self
                        .string(f, &at(&ip, "pipeline_file"))
                        .unwrap_or_default()
                }
                None => self.err(&at(&ip, "pipeline_file"), "required"),
            }
            if let Some(a) = m.get("auto_promote") {
                self.when_condition(a, &at(&ip, "auto_promote"));
                p.auto = true;
            }
            if m.contains_key("auto_promote_on") {
                p.auto = true;
            }
            out.push(p);
        }
        out
    }
}

/// The pipeline's `execution_time_limit` when it sets none, minutes.
pub const DEFAULT_PIPELINE_LIMIT: u64 = 60;

/// Minutes as `1 h 30 min`.
pub fn duration(minutes: u64) -> String {
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// A short rendering of a bad value for an error message (never a whole
/// mapping).
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => kind(other).to_string(),
    }
}

/// A cycle in `graph` (block → the blocks it depends on), as the blocks
/// on it, the first one repeated at the end; depth-first, bounded by the
/// graph's size.
fn find_cycle(graph: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0 unvisited, 1 on the stack, 2 done.
    let mut state = vec![0u8; graph.len()];
    for start in 0..graph.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = graph[node].get(*next) {
                *next += 1;
                match state[dep] {
                    0 => {
                        state[dep] = 1;
                        stack.push((dep, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|&(n, _)| n).collect();
                        cycle.push(dep);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of `want` starts one of `errs`, and there are no others.
    fn assert_exactly(errs: &[String], want: &[&str]) {
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "{w} not in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    fn errors(yaml: &str) -> Vec<String> {
        match parse(yaml, Path::new("/nonexistent/.semaphore/semaphore.yml")) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    const HEAD: &str = "version: v1.0\nagent:\n  machine:\n    type: e1-standard-2\n";

    #[test]
    fn a_minimal_pipeline_is_valid() {
        let yaml = format!("{HEAD}blocks:\n  - name: A\n    task:\n      jobs:\n        - name: j\n          commands: [echo]\n");
        assert_eq!(errors(&yaml), Vec::<String>::new());
        assert!(looks_like_pipeline(&yaml));
        assert!(!looks_like_pipeline("commands:\n  - directive: echo\n"));
    }

    #[test]
    fn several_errors_are_reported_at_once_with_their_paths() {
        let yaml = "version: v2\nbogus: 1\nagent:\n  machine: {}\nblocks:\n  - name: A\n    task:\n      jobs:\n        - name: j\n        - name: k\n          commands: [a]\n          commands_file: x.sh\n  - task:\n      jobs: []\n";
        let errs = errors(yaml);
        let want = [
            "version: must be \"v1.0\", not \"v2\"",
            "bogus: unknown key",
            "agent.machine.type: required",
            "blocks[0].task.jobs[0]: needs commands or commands_file",
            "blocks[0].task.jobs[1]: has both commands and commands_file; use one",
            "blocks[1].task.jobs: needs at least one job",
        ];
        assert_exactly(&errs, &want);
    }

    #[test]
    fn each_kind_of_job_error() {
        let yaml = format!(
            "{HEAD}blocks:\n  - name: A\n    skip:\n      when: true\n    run:\n      when: \"branch = 'x'\"\n    execution_time_limit:\n      minutes: 0\n    task:\n      env_vars:\n        - name: 1BAD\n          value: x\n        - name: NOVALUE\n      jobs:\n        - name: j\n          commands: [a]\n          parallelism: 51\n          matrix:\n            - env_var: A\n              values: []\n        - name: j\n          commands: [a]\n          execution_time_limit:\n            minutes: 1\n            hours: 1\n        - commands: [a]\n          matrix:\n            - values: [x]\n          priority:\n            - value: 101\n              when: true\n"
        );
        let errs = errors(&yaml);
        let want = [
            "blocks[0]: has both skip and run",
            "blocks[0].execution_time_limit.minutes: must be a whole number from 1 to 1440, not 0",
            "blocks[0].task.env_vars[0].name: \"1BAD\" is not a valid environment variable name",
            "blocks[0].task.env_vars[1].value: required",
            "blocks[0].task.jobs[0]: has both matrix and parallelism",
            "blocks[0].task.jobs[0].parallelism: must be a whole number from 1 to 50, not 51",
            "blocks[0].task.jobs[0].matrix[0].values: needs at least one value",
            "blocks[0].task.jobs[1].name: there is another job named \"j\"",
            "blocks[0].task.jobs[1].execution_time_limit: has both minutes and hours",
            "blocks[0].task.jobs[2].matrix[0].env_var: required",
            "blocks[0].task.jobs[2].priority[0].value: must be a whole number from 0 to 100, not 101",
        ];
        assert_exactly(&errs, &want);
    }

    #[test]
    fn dependency_errors() {
        let block = |name: &str, deps: &str| {
            format!("  - name: {name}\n    dependencies: {deps}\n    task:\n      jobs:\n        - commands: [a]\n")
        };
        let cyc = format!(
            "{HEAD}blocks:\n{}{}{}",
            block("A", "[C]"),
            block("B", "[A]"),
            block("C", "[B]")
        );
        let errs = errors(&cyc);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].contains("cycle"), "{errs:?}");
        assert!(
            errs[0].contains("\"A\" → \"C\" → \"B\" → \"A\""),
            "{errs:?}"
        );

        let unknown = format!("{HEAD}blocks:\n{}{}", block("A", "[]"), block("B", "[Z]"));
        assert_eq!(
            errors(&unknown),
            vec!["blocks[1].dependencies[0]: no block is named \"Z\"".to_string()]
        );

        let mixed = format!(
            "{HEAD}blocks:\n{}  - name: B\n    task:\n      jobs:\n        - commands: [a]\n",
            block("A", "[]")
        );
        let errs = errors(&mixed);
        assert!(
            errs.len() == 1 && errs[0].starts_with("blocks[1]: has no dependencies"),
            "{errs:?}"
        );

        let dup = format!("{HEAD}blocks:\n{}{}", block("A", "[]"), block("A", "[]"));
        assert_eq!(
            errors(&dup),
            vec!["blocks[1].name: there is another block named \"A\"".to_string()]
        );
    }

    #[test]
    fn bad_when_and_missing_commands_file_are_errors() {
        let yaml = format!(
            "{HEAD}blocks:\n  - name: A\n    skip:\n      when: \"branch = \"\n    task:\n      prologue:\n        commands_file: nope.sh\n      jobs:\n        - commands: [a]\n"
        );
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].starts_with("blocks[0].skip.when: "), "{errs:?}");
        assert!(
            errs[1].starts_with("blocks[0].task.prologue.commands_file: cannot read /nonexistent/.semaphore/nope.sh"),
            "{errs:?}"
        );
    }

    #[test]
    fn not_a_mapping_and_bad_yaml() {
        assert!(errors("- a\n- b\n")[0].starts_with("(top level): must be a mapping"));
        assert!(errors("version: [\n")[0].starts_with("not valid YAML"));
        let errs = errors("version: v1.0\n");
        assert!(errs.iter().any(|e| e.starts_with("agent: required")));
        assert!(errs.iter().any(|e| e.starts_with("blocks: required")));
    }

    #[test]
    fn implicit_dependencies_are_the_previous_block() {
        let yaml = format!("{HEAD}blocks:\n  - name: A\n    task:\n      jobs:\n        - commands: [a]\n  - name: B\n    task:\n      jobs:\n        - commands: [a]\n  - task:\n      jobs:\n        - commands: [a]\n");
        let p = parse(&yaml, Path::new("x.yml")).unwrap_or_default();
        assert_eq!(
            p.dependencies(),
            vec![vec![], vec!["A".to_string()], vec!["B".to_string()]]
        );
        assert_eq!(p.blocks[2].name, "Nameless block 1");
        assert_eq!(p.blocks[2].task.jobs[0].name, "Nameless 1");
    }

    #[test]
    fn parameters_are_substituted_outside_commands_and_unset_ones_become_their_names() {
        let yaml = format!(
            "{HEAD}name: \"Deploy ${{{{parameters.ENV}}}} \"\nblocks:\n  - name: \"%{{{{ parameters.ENV }}}}\"\n    task:\n      env_vars:\n        - name: A\n          value: x-${{{{parameters.MISSING}}}}-%{{{{parameters.ENV}}}}\n      jobs:\n        - name: j\n          commands: [\"echo ${{{{parameters.ENV}}}}\"]\n"
        );
        let params = [("ENV".to_string(), "prod".to_string())];
        let source = Source {
            root: Path::new("/nonexistent"),
            parameters: &params,
        };
        let p = parse_in(&yaml, Path::new("/nonexistent/p.yml"), source)
            .unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(p.name, "Deploy prod");
        assert_eq!(p.blocks[0].name, "prod");
        assert_eq!(
            p.blocks[0].task.env_vars,
            [("A".to_string(), "x-MISSING-\"prod\"".to_string())]
        );
        assert_eq!(
            p.blocks[0].task.jobs[0].commands,
            ["echo ${{parameters.ENV}}"]
        );
        assert_eq!(p.unset_parameters, ["MISSING"]);

        let piped = format!(
            "{HEAD}name: \"${{{{ parameters.ENV | upper }}}}\"\nblocks:\n  - task:\n      jobs:\n        - commands: [a]\n"
        );
        let errs = parse_in(&piped, Path::new("/nonexistent/p.yml"), source)
            .err()
            .unwrap_or_default();
        assert!(
            errs.len() == 1
                && errs[0]
                    .starts_with("name: the template expression \"${{ parameters.ENV | upper }}\""),
            "{errs:?}"
        );
    }

    #[test]
    fn commands_files_keep_blank_lines_and_slash_paths_start_at_the_root() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let semaphore = root.path().join(".semaphore");
        std::fs::create_dir_all(semaphore.join("cmd")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(semaphore.join("cmd/a.sh"), "one\n\n  two \r\n")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(semaphore.join("empty.sh"), "").unwrap_or_else(|e| panic!("{e}"));
        let yaml = format!("{HEAD}blocks:\n  - task:\n      jobs:\n        - commands_file: /.semaphore/cmd/a.sh\n        - commands_file: cmd/a.sh\n");
        let path = semaphore.join("semaphore.yml");
        let source = Source {
            root: root.path(),
            parameters: &[],
        };
        let p = parse_in(&yaml, &path, source).unwrap_or_else(|e| panic!("{e:#?}"));
        for job in &p.blocks[0].task.jobs {
            assert_eq!(job.commands, ["one", "", "  two "]);
        }
        let empty =
            format!("{HEAD}blocks:\n  - task:\n      jobs:\n        - commands_file: empty.sh\n");
        let errs = parse_in(&empty, &path, source).err().unwrap_or_default();
        assert!(
            errs.len() == 1 && errs[0].ends_with("empty.sh is empty"),
            "{errs:?}"
        );
    }
}
