//! A valid pipeline → one planned job per job Semaphore would create, with
//! the job request it would get (the rules are listed in `mod.rs`).

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{json, Value};

use super::git::GitInfo;
use super::schema::{Agent, Block, Container, Epilogue, Job, Pipeline, Task};
use super::secrets::Secret;
use crate::request::{self, JobRequest};

/// One job as it will run.
#[derive(Clone, Debug, Default)]
pub struct PlannedJob {
    pub block: String,
    pub block_index: usize,
    pub job: String,
    /// What prefixes its lines: the job's name, or `block / job` when
    /// another block has a job of that name.
    pub label: String,
    /// The block's dependencies (explicit or implicit).
    pub dependencies: Vec<String>,
    pub job_id: String,
    /// Final order; a later entry wins over an earlier one of that name.
    pub env_vars: Vec<(String, String)>,
    pub commands: Vec<String>,
    pub epilogue: Epilogue,
    /// `(path, base64 content, mode)`.
    pub files: Vec<(String, String, String)>,
    pub containers: Vec<Container>,
    /// The job's own `execution_time_limit`, minutes.
    pub time_limit: Option<u64>,
    /// Values from secrets, masked in the job's output and in `--list`.
    pub secret_values: Vec<String>,
}

/// What expansion needs besides the pipeline.
pub struct Context<'a> {
    pub git: &'a GitInfo,
    /// Secrets by name; a name missing here is reported by [`missing_secrets`].
    pub secrets: &'a BTreeMap<String, Secret>,
    /// `--env`, placed where Semaphore puts a run's parameters.
    pub parameters: &'a [(String, String)],
    pub workflow_id: String,
    pub pipeline_id: String,
    pub created_at: u64,
}

/// A random id in the UUID v4 shape Semaphore's ids have.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    crate::random::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Every secret name the pipeline uses, with where, that `secrets` lacks.
pub fn missing_secrets(p: &Pipeline, secrets: &BTreeMap<String, Secret>) -> Vec<String> {
    let mut uses: Vec<(String, &String)> = Vec::new();
    for (i, s) in p.global.secrets.iter().enumerate() {
        uses.push((format!("global_job_config.secrets[{i}]"), s));
    }
    let mut agents: Vec<(String, &Agent)> = vec![("agent".into(), &p.agent)];
    for (bi, b) in p.blocks.iter().enumerate() {
        for (i, s) in b.task.secrets.iter().enumerate() {
            uses.push((format!("blocks[{bi}].task.secrets[{i}]"), s));
        }
        if let Some(a) = &b.task.agent {
            agents.push((format!("blocks[{bi}].task.agent"), a));
        }
    }
    for (path, a) in agents {
        for (ci, c) in a.containers.iter().enumerate() {
            for (i, s) in c.secrets.iter().enumerate() {
                uses.push((format!("{path}.containers[{ci}].secrets[{i}]"), s));
            }
        }
    }
    uses.into_iter()
        .filter(|(_, name)| !secrets.contains_key(*name))
        .map(|(path, name)| format!("{path}: secret {name:?} is not in the secrets file"))
        .collect()
}

/// The names of the secrets `secrets` lacks, each once, in order of use.
pub fn missing_secret_names(p: &Pipeline, secrets: &BTreeMap<String, Secret>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut agents: Vec<&Agent> = vec![&p.agent];
    let mut uses: Vec<&String> = p.global.secrets.iter().collect();
    for b in &p.blocks {
        uses.extend(&b.task.secrets);
        agents.extend(&b.task.agent);
    }
    for a in agents {
        for c in &a.containers {
            uses.extend(&c.secrets);
        }
    }
    for name in uses {
        if !secrets.contains_key(name) && !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Every job of every block, in pipeline order.
pub fn expand(p: &Pipeline, cx: &Context<'_>) -> Vec<PlannedJob> {
    let deps = p.dependencies();
    let mut out = Vec::new();
    for (bi, block) in p.blocks.iter().enumerate() {
        for job in &block.task.jobs {
            for (name, job_vars) in job_variants(job) {
                out.push(plan(p, cx, bi, block, &deps[bi], job, name, job_vars, true));
            }
        }
    }
    out
}

/// The jobs of `after_pipeline`, planned like a last block.
pub fn expand_after(p: &Pipeline, cx: &Context<'_>) -> Vec<PlannedJob> {
    let Some(task) = &p.after_pipeline else {
        return Vec::new();
    };
    let block = Block {
        name: "After pipeline".into(),
        task: task.clone(),
        ..Block::default()
    };
    let names: Vec<String> = p.blocks.iter().map(|b| b.name.clone()).collect();
    let mut out = Vec::new();
    for job in &task.jobs {
        for (name, vars) in job_variants(job) {
            // after_pipeline jobs get the pipeline's agent and variables,
            // but no global_job_config (as Semaphore's reviser does).
            let mut planned = plan(
                p,
                cx,
                p.blocks.len(),
                &block,
                &names,
                job,
                name,
                vars,
                false,
            );
            planned.block = "after_pipeline".into();
            out.push(planned);
        }
    }
    out
}

/// `(name, the job's env vars)` for each job a `matrix` or `parallelism`
/// makes of `job` (just the job itself without either).
fn job_variants(job: &Job) -> Vec<(String, Vec<(String, String)>)> {
    if let Some(n) = job.parallelism {
        let mut base = job.env_vars.clone();
        base.push(("SEMAPHORE_JOB_COUNT".into(), n.to_string()));
        return (1..=n)
            .map(|i| {
                let mut vars = base.clone();
                vars.push(("SEMAPHORE_JOB_INDEX".into(), i.to_string()));
                (format!("{} - {i}/{n}", job.name), vars)
            })
            .collect();
    }
    if job.matrix.is_empty() {
        return vec![(job.name.clone(), job.env_vars.clone())];
    }
    // The Cartesian product, the first axis outermost.
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (name, values) in &job.matrix {
        combos = combos
            .iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((name.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    combos
        .into_iter()
        .map(|combo| {
            let suffix: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut vars = job.env_vars.clone();
            vars.extend(combo);
            (format!("{} - {}", job.name, suffix.join(", ")), vars)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn plan(
    p: &Pipeline,
    cx: &Context<'_>,
    bi: usize,
    block: &Block,
    deps: &[String],
    job: &Job,
    name: String,
    job_vars: Vec<(String, String)>,
    global: bool,
) -> PlannedJob {
    let task: &Task = &block.task;
    let agent = task.agent.as_ref().unwrap_or(&p.agent);
    let empty = super::schema::Global::default();
    let g = if global { &p.global } else { &empty };
    let job_id = new_id();

    let mut secret_names: Vec<&String> = g.secrets.iter().collect();
    secret_names.extend(task.secrets.iter());
    let secrets: Vec<&Secret> = secret_names
        .iter()
        .filter_map(|n| cx.secrets.get(*n))
        .collect();
    let mut secret_values: Vec<String> = Vec::new();

    let project = if cx.git.repo_name.is_empty() {
        "local".to_string()
    } else {
        cx.git.repo_name.clone()
    };
    let pipeline_name = if p.name.is_empty() {
        "Pipeline".to_string()
    } else {
        p.name.clone()
    };
    let mut env: Vec<(String, String)> = [
        ("TERM", "xterm".to_string()),
        ("CI", "true".into()),
        ("SEMAPHORE", "true".into()),
        ("SEMAPHORE_PROJECT_NAME", project),
        ("SEMAPHORE_PROJECT_ID", "local".into()),
        ("SEMAPHORE_JOB_NAME", name.clone()),
        ("SEMAPHORE_JOB_ID", job_id.clone()),
        ("SEMAPHORE_JOB_CREATION_TIME", cx.created_at.to_string()),
        ("SEMAPHORE_JOB_TYPE", "pipeline_job".into()),
        ("SEMAPHORE_AGENT_MACHINE_TYPE", agent.machine_type.clone()),
        ("SEMAPHORE_AGENT_MACHINE_OS_IMAGE", agent.os_image.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(cx.git.env_vars());
    for s in &secrets {
        for (k, v) in &s.env_vars {
            env.push((k.clone(), v.clone()));
            secret_values.push(v.clone());
        }
    }
    env.extend(
        [
            ("SEMAPHORE_WORKFLOW_ID", cx.workflow_id.clone()),
            ("SEMAPHORE_WORKFLOW_NUMBER", "1".into()),
            ("SEMAPHORE_WORKFLOW_RERUN", "false".into()),
            ("SEMAPHORE_WORKFLOW_TRIGGERED_BY_HOOK", "false".into()),
            ("SEMAPHORE_WORKFLOW_TRIGGERED_BY_SCHEDULE", "false".into()),
            ("SEMAPHORE_WORKFLOW_TRIGGERED_BY_API", "false".into()),
            ("SEMAPHORE_WORKFLOW_TRIGGERED_BY_MANUAL_RUN", "true".into()),
            ("SEMAPHORE_PIPELINE_ARTEFACT_ID", cx.pipeline_id.clone()),
            ("SEMAPHORE_PIPELINE_ID", cx.pipeline_id.clone()),
            ("SEMAPHORE_PIPELINE_NAME", pipeline_name),
            ("SEMAPHORE_BLOCK_NAME", block.name.clone()),
            ("SEMAPHORE_PIPELINE_RERUN", "false".into()),
            ("SEMAPHORE_PIPELINE_PROMOTION", "false".into()),
            ("SEMAPHORE_PIPELINE_PROMOTED_BY", String::new()),
            ("SEMAPHORE_WORKFLOW_TRIGGERED_BY", cx.git.committer.clone()),
            ("SEMAPHORE_GIT_COMMIT_AUTHOR", cx.git.commit_author.clone()),
            ("SEMAPHORE_GIT_COMMITTER", cx.git.committer.clone()),
            ("SEMAPHORE_PIPELINE_0_ARTEFACT_ID", cx.pipeline_id.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v)),
    );
    env.extend(cx.parameters.iter().cloned());
    env.extend(g.env_vars.iter().cloned());
    env.extend(task.env_vars.iter().cloned());
    env.extend(job_vars);

    let mut files = Vec::new();
    for s in &secrets {
        for (path, content) in &s.files {
            files.push((path.clone(), content.clone(), "0644".to_string()));
        }
    }

    let mut commands = g.prologue.clone();
    commands.extend(task.prologue.iter().cloned());
    commands.extend(job.commands.iter().cloned());
    let then = |a: &[String], b: &[String]| -> Vec<String> { a.iter().chain(b).cloned().collect() };
    let epilogue = Epilogue {
        always: then(&task.epilogue.always, &g.epilogue.always),
        on_pass: then(&task.epilogue.on_pass, &g.epilogue.on_pass),
        on_fail: then(&task.epilogue.on_fail, &g.epilogue.on_fail),
    };

    let containers = agent
        .containers
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.image = rewrite_image(&c.image);
            let mut vars = Vec::new();
            for s in c.secrets.iter().filter_map(|n| cx.secrets.get(n)) {
                for (k, v) in &s.env_vars {
                    vars.push((k.clone(), v.clone()));
                    secret_values.push(v.clone());
                }
            }
            vars.extend(c.env_vars.iter().cloned());
            c.env_vars = vars;
            c
        })
        .collect();

    secret_values.retain(|v| v.len() >= crate::mask::MIN_SECRET_LEN);
    PlannedJob {
        block: block.name.clone(),
        block_index: bi,
        label: name.clone(),
        job: name,
        dependencies: deps.to_vec(),
        job_id,
        env_vars: env,
        commands,
        epilogue,
        files,
        containers,
        time_limit: job.execution_time_limit,
        secret_values,
    }
}

/// `semaphoreci/<image>` → `registry.semaphoreci.com/<image>`, as
/// Semaphore redirects its convenience images.
pub fn rewrite_image(image: &str) -> String {
    match image.strip_prefix("semaphoreci/") {
        Some(rest) => format!("registry.semaphoreci.com/{rest}"),
        None => image.to_string(),
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn commands(list: &[String]) -> Vec<request::Command> {
    list.iter()
        .map(|c| request::Command {
            directive: c.clone(),
            alias: String::new(),
        })
        .collect()
}

fn env(list: &[(String, String)]) -> Vec<request::EnvVar> {
    list.iter()
        .map(|(k, v)| request::EnvVar {
            name: k.clone(),
            value: b64(v),
        })
        .collect()
}

impl PlannedJob {
    /// The job request the agent runs.
    pub fn request(&self) -> JobRequest {
        let mut r = JobRequest {
            job_id: self.job_id.clone(),
            commands: commands(&self.commands),
            epilogue_always_commands: commands(&self.epilogue.always),
            epilogue_on_pass_commands: commands(&self.epilogue.on_pass),
            epilogue_on_fail_commands: commands(&self.epilogue.on_fail),
            env_vars: env(&self.env_vars),
            files: self
                .files
                .iter()
                .map(|(path, content, mode)| request::File {
                    path: path.clone(),
                    content: content.clone(),
                    mode: mode.clone(),
                })
                .collect(),
            ..JobRequest::default()
        };
        if !self.containers.is_empty() {
            r.executor = "dockercompose".into();
            r.compose.containers = self
                .containers
                .iter()
                .map(|c| request::Container {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    command: c.command.clone(),
                    entrypoint: c.entrypoint.clone(),
                    user: c.user.clone(),
                    env_vars: env(&c.env_vars),
                })
                .collect();
        }
        r
    }

    /// The value shown for `v` in `--list`: secrets redacted.
    fn shown(&self, v: &str) -> String {
        if self.secret_values.iter().any(|s| s == v) {
            crate::mask::REDACTED.to_string()
        } else {
            v.to_string()
        }
    }

    /// One `--list --json` object: the job-file fields with values
    /// decoded (secrets redacted), plus block, job and dependencies.
    pub fn list_json(&self) -> Value {
        let cmds =
            |l: &[String]| -> Vec<Value> { l.iter().map(|c| json!({"directive": c})).collect() };
        let vars = |l: &[(String, String)]| -> Vec<Value> {
            l.iter()
                .map(|(k, v)| json!({"name": k, "value": self.shown(v)}))
                .collect()
        };
        let mut o = json!({
            "block": self.block,
            "job": self.job,
            "dependencies": self.dependencies,
            "job_id": self.job_id,
            "executor": if self.containers.is_empty() { "shell" } else { "dockercompose" },
            "env_vars": vars(&self.env_vars),
            "files": self.files.iter().map(|(p, _, m)| json!({"path": p, "content": crate::mask::REDACTED, "mode": m})).collect::<Vec<_>>(),
            "commands": cmds(&self.commands),
            "epilogue_always_commands": cmds(&self.epilogue.always),
            "epilogue_on_pass_commands": cmds(&self.epilogue.on_pass),
            "epilogue_on_fail_commands": cmds(&self.epilogue.on_fail),
        });
        if let Some(limit) = self.time_limit {
            o["execution_time_limit_minutes"] = json!(limit);
        }
        if !self.containers.is_empty() {
            o["compose"] = json!({
                "containers": self.containers.iter().map(|c| json!({
                    "name": c.name,
                    "image": c.image,
                    "command": c.command,
                    "entrypoint": c.entrypoint,
                    "user": c.user,
                    "env_vars": vars(&c.env_vars),
                })).collect::<Vec<_>>()
            });
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn pipeline(yaml: &str) -> Pipeline {
        match super::super::schema::parse(yaml, Path::new("p.yml")) {
            Ok(p) => p,
            Err(e) => panic!("{e:#?}"),
        }
    }

    fn jobs(yaml: &str) -> Vec<PlannedJob> {
        let git = GitInfo::default();
        let secrets = BTreeMap::new();
        let cx = Context {
            git: &git,
            secrets: &secrets,
            parameters: &[],
            workflow_id: "w".into(),
            pipeline_id: "p".into(),
            created_at: 1,
        };
        expand(&pipeline(yaml), &cx)
    }

    const HEAD: &str = "version: v1.0\nagent:\n  machine:\n    type: t\n";

    #[test]
    fn matrix_names_and_env_order() {
        let yaml = format!("{HEAD}blocks:\n  - name: B\n    task:\n      jobs:\n        - name: M\n          commands: [x]\n          env_vars:\n            - name: OWN\n              value: o\n          matrix:\n            - env_var: A\n              values: ['1', '2']\n            - env_var: B\n              values: [x, y]\n");
        let j = jobs(&yaml);
        let names: Vec<&str> = j.iter().map(|j| j.job.as_str()).collect();
        assert_eq!(
            names,
            [
                "M - A=1, B=x",
                "M - A=1, B=y",
                "M - A=2, B=x",
                "M - A=2, B=y"
            ]
        );
        let tail: Vec<String> = j[1].env_vars[j[1].env_vars.len() - 3..]
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(tail, ["OWN=o", "A=1", "B=y"]);
    }

    #[test]
    fn parallelism_names_and_index_vars() {
        let yaml = format!("{HEAD}blocks:\n  - name: B\n    task:\n      jobs:\n        - name: P\n          commands: [x]\n          parallelism: 3\n");
        let j = jobs(&yaml);
        let names: Vec<&str> = j.iter().map(|j| j.job.as_str()).collect();
        assert_eq!(names, ["P - 1/3", "P - 2/3", "P - 3/3"]);
        let tail: Vec<String> = j[2].env_vars[j[2].env_vars.len() - 2..]
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(tail, ["SEMAPHORE_JOB_COUNT=3", "SEMAPHORE_JOB_INDEX=3"]);
    }

    #[test]
    fn global_config_merges_around_the_task() {
        let yaml = format!("{HEAD}global_job_config:\n  prologue:\n    commands: [g1]\n  epilogue:\n    always:\n      commands: [ga]\n    on_fail:\n      commands: [gf]\n  env_vars:\n    - name: X\n      value: global\nblocks:\n  - name: B\n    task:\n      prologue:\n        commands: [t1]\n      epilogue:\n        commands: [ta]\n      env_vars:\n        - name: X\n          value: task\n      jobs:\n        - commands: [j1]\n");
        let j = &jobs(&yaml)[0];
        assert_eq!(j.commands, ["g1", "t1", "j1"]);
        assert_eq!(j.epilogue.always, ["ta", "ga"]);
        assert_eq!(j.epilogue.on_fail, ["gf"]);
        let xs: Vec<&str> = j
            .env_vars
            .iter()
            .filter(|(k, _)| k == "X")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(xs, ["global", "task"]);
        assert_eq!(j.env_vars[0], ("TERM".to_string(), "xterm".to_string()));
    }

    #[test]
    fn images_are_redirected() {
        assert_eq!(
            rewrite_image("semaphoreci/ruby:3.2"),
            "registry.semaphoreci.com/ruby:3.2"
        );
        assert_eq!(rewrite_image("postgres:16"), "postgres:16");
    }
}
